//! Tenants: one store, users kept apart per tenant.
//!
//! The gateway's API keys belong to owners (tenants). Two tenants may both
//! have a user `alice`; each must see only its own. A tenant's user is stored
//! under a qualified id, `{tenant}\u{1f}{user_id}`, and the tenant's requests
//! are rewritten on the way in and their answers on the way out, so the store,
//! its indexes, dedupe, history and the vector index need nothing new: every
//! one of them is already scoped by user.
//!
//! A client's `user_id` cannot hold the separator (control characters are
//! refused), so a qualified id never equals a client's id, and the part after
//! the last separator is always the client's: two tenants' users never meet.
//! Requests without a tenant (no keys configured) use the client's `user_id`
//! as it is, as before tenants existed.

use crate::error::Result;
use crate::input::{PatchInput, SearchQuery, WriteRequest};
use crate::service::{Memories, SearchResults};
use crate::types::{HistoryEntry, ListQuery, Memory, Page, WriteOutcome};
use serde_json::Value;
use uuid::Uuid;

/// Between a tenant and its user's id in the stored id.
const SEP: char = '\u{1f}';

/// The stored id of a tenant's user.
pub(crate) fn qualify(tenant: Option<&str>, user_id: String) -> String {
    match tenant {
        None => user_id,
        Some(t) => {
            let mut s = String::with_capacity(t.len() + SEP.len_utf8() + user_id.len());
            s.push_str(t);
            s.push(SEP);
            s.push_str(&user_id);
            s
        }
    }
}

/// The stored id of the user a request names (`user_id`, checked first: a
/// client's id never holds the separator).
pub(crate) fn user(tenant: Option<&str>, user_id: Option<&str>) -> Result<String> {
    crate::input::required_id(user_id, "user_id").map(|u| qualify(tenant, u))
}

/// The client's id of a tenant's stored user id (in place).
fn unqualify(tenant: Option<&str>, user_id: &mut String) {
    if let Some(t) = tenant
        && user_id.starts_with(t)
        && user_id[t.len()..].starts_with(SEP)
    {
        user_id.drain(..t.len() + SEP.len_utf8());
    }
}

fn unqualify_value(tenant: Option<&str>, v: &mut Option<Value>) {
    if let Some(Value::String(u)) = v.as_mut().and_then(|v| v.get_mut("user_id")) {
        unqualify(tenant, u);
    }
}

/// One tenant's view of the memory service ([`Memories::scoped`]): the same
/// operations, over that tenant's users only. Ids the tenant does not own
/// are not found, as if they did not exist.
#[derive(Clone, Copy)]
pub struct Scoped<'a> {
    svc: &'a Memories,
    tenant: Option<&'a str>,
}

impl<'a> Scoped<'a> {
    pub(crate) fn new(svc: &'a Memories, tenant: Option<&'a str>) -> Self {
        Scoped { svc, tenant }
    }

    fn out(&self, mut m: Memory) -> Memory {
        unqualify(self.tenant, &mut m.user_id);
        m
    }

    /// [`Memories::write`].
    pub async fn write(&self, req: WriteRequest) -> Result<Vec<WriteOutcome>> {
        let mut out = self.svc.write_in(self.tenant, req).await?;
        for o in &mut out {
            unqualify(self.tenant, &mut o.memory.user_id);
        }
        Ok(out)
    }

    /// [`Memories::get`].
    pub async fn get(&self, user_id: &str, id: Uuid) -> Result<Memory> {
        let m = self.svc.get_in(self.tenant, user_id, id).await?;
        Ok(self.out(m))
    }

    /// [`Memories::update`].
    pub async fn update(&self, user_id: &str, id: Uuid, patch: PatchInput) -> Result<Memory> {
        let m = self.svc.update_in(self.tenant, user_id, id, patch).await?;
        Ok(self.out(m))
    }

    /// [`Memories::delete`].
    pub async fn delete(&self, user_id: &str, id: Uuid) -> Result<()> {
        self.svc.delete_in(self.tenant, user_id, id).await
    }

    /// [`Memories::delete_user`].
    pub async fn delete_user(&self, user_id: Option<&str>) -> Result<u64> {
        self.svc.delete_user_in(self.tenant, user_id).await
    }

    /// [`Memories::list`].
    pub async fn list(&self, mut q: ListQuery) -> Result<Page> {
        q.filter.user_id = qualify(self.tenant, std::mem::take(&mut q.filter.user_id));
        let mut page = self.svc.list(&q).await?;
        for m in &mut page.memories {
            unqualify(self.tenant, &mut m.user_id);
        }
        Ok(page)
    }

    /// [`Memories::history`]: each entry's old and new value name the
    /// client's `user_id`.
    pub async fn history(&self, user_id: &str, id: Uuid) -> Result<Vec<HistoryEntry>> {
        let mut h = self.svc.history_in(self.tenant, user_id, id).await?;
        for e in &mut h {
            unqualify_value(self.tenant, &mut e.old_value);
            unqualify_value(self.tenant, &mut e.new_value);
        }
        Ok(h)
    }

    /// [`Memories::search`].
    pub async fn search(&self, mut q: SearchQuery) -> Result<SearchResults> {
        q.filter.user_id = qualify(self.tenant, std::mem::take(&mut q.filter.user_id));
        let mut r = self.svc.search(&q).await?;
        for h in &mut r.results {
            unqualify(self.tenant, &mut h.memory.user_id);
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualified_ids_round_trip_and_never_collide() {
        let q = qualify(Some("team-a"), "alice".into());
        assert_eq!(q, "team-a\u{1f}alice");
        let mut back = q.clone();
        unqualify(Some("team-a"), &mut back);
        assert_eq!(back, "alice");
        // Another tenant's prefix is left alone (never its user).
        let mut other = q;
        unqualify(Some("team"), &mut other);
        assert_eq!(other, "team-a\u{1f}alice");
        // Without a tenant nothing changes either way.
        assert_eq!(qualify(None, "alice".into()), "alice");
        let mut plain = String::from("alice");
        unqualify(None, &mut plain);
        assert_eq!(plain, "alice");
        let mut v = Some(serde_json::json!({"user_id": "t\u{1f}bob", "content": "x"}));
        unqualify_value(Some("t"), &mut v);
        assert_eq!(
            v,
            Some(serde_json::json!({"user_id": "bob", "content": "x"}))
        );
    }
}
