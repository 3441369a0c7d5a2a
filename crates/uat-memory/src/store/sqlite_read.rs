//! The SQLite read path: a few `rusqlite` connections used from the blocking
//! pool, one cached prepared statement per query shape, rows decoded straight
//! into [`Memory`].
//!
//! Writes stay on sqlx (one connection, `BEGIN IMMEDIATE`). Reads left it
//! because sqlx-sqlite runs every connection on a worker thread of its own
//! and copies each column value out of SQLite; on a page of 50 memories that
//! hand-off and copying cost more than the query itself. Both link the same
//! `libsqlite3-sys`, so there is one SQLite library in the process.

use super::{MAX_IN_LIST, Nearest, next_ids};
use crate::error::{MemoryError, Result};
use crate::keyword::{match_expr, user_key};
use crate::types::{
    Change, ChangeOp, Cursor, Embedding, ExactHits, Filter, HistoryEntry, IndexEntry, ListQuery,
    Memory, Page, TagMode, Unembedded, UnembeddedPage, bytes_to_vector, from_micros, now,
    to_micros,
};
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, Row};
use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use uuid::Uuid;

/// Bytes of the database file each reader maps (address space, not memory:
/// pages are shared with the OS page cache). SQLite caps it at its build's
/// maximum (2 GiB by default); pages past that are read as before.
const MMAP_SIZE: i64 = 1 << 40;

/// Prepared statements kept per connection (one per query shape).
const STATEMENT_CACHE: usize = 128;

const COLS: &str = "m.id, m.user_id, m.agent_id, m.run_id, m.kind, m.content, m.tags, m.metadata, m.created_at, m.updated_at, m.expires_at";
/// The unique index on `memories.id`.
const ID_INDEX: &str = "memories_id_idx";
/// Columns of an [`IndexEntry`], from `memories m` joined with its
/// embedding `e` (a memory without one has no entry).
const ENTRY_COLS: &str =
    "m.id, m.user_id, m.agent_id, m.kind, m.tags, m.created_at, m.expires_at, e.embedding, e.model";
/// The tables [`ENTRY_COLS`] reads.
const ENTRY_FROM: &str = "memories m JOIN memory_embeddings e ON e.rid = m.rid";

/// A bounded pool of read connections to one database file.
pub(crate) struct Readers {
    inner: Arc<Inner>,
    permits: Arc<Semaphore>,
}

struct Inner {
    path: PathBuf,
    idle: parking_lot::Mutex<Vec<Connection>>,
}

impl Inner {
    fn take(&self) -> Result<Connection> {
        if let Some(c) = self.idle.lock().pop() {
            return Ok(c);
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(db)?;
        // Pages are read through a shared memory map of the file: every
        // reader sees the OS page cache directly (no read() and copy per page
        // into eight private caches), so its own cache can stay small.
        conn.pragma_update(None, "mmap_size", MMAP_SIZE)
            .map_err(db)?;
        conn.pragma_update(None, "cache_size", -8192).map_err(db)?;
        conn.pragma_update(None, "query_only", true).map_err(db)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(conn)
    }
}

impl Readers {
    /// Up to `max` connections to the file at `path`, opened on first use.
    pub(super) fn new(path: PathBuf, max: usize) -> Self {
        Readers {
            inner: Arc::new(Inner {
                path,
                idle: parking_lot::Mutex::new(Vec::new()),
            }),
            permits: Arc::new(Semaphore::new(max.max(1))),
        }
    }

    /// Runs `f` on a free connection, on the blocking pool.
    async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| MemoryError::Index(format!("SQLite read pool closed: {e}")))?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = inner.take()?;
            let r = f(&conn);
            inner.idle.lock().push(conn);
            drop(permit);
            r
        })
        .await
        .map_err(|e| MemoryError::Index(format!("SQLite read task failed: {e}")))?
    }

    /// Runs `queries` one after another on one connection; `row` adds what
    /// it makes of each row to the output.
    async fn collect<T: Send + 'static>(
        &self,
        queries: Vec<Sql>,
        capacity: usize,
        row: fn(&Row<'_>, &mut Vec<T>) -> Result<()>,
    ) -> Result<Vec<T>> {
        self.run(move |c| {
            let mut out = Vec::with_capacity(capacity);
            for sql in queries {
                sql.each(c, |r| row(r, &mut out))?;
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn get(&self, user_id: &str, id: Uuid) -> Result<Option<Memory>> {
        let user_id = user_id.to_string();
        self.run(move |c| get(c, &user_id, id)).await
    }

    pub(super) async fn list(&self, q: &ListQuery) -> Result<Page> {
        let sql = list_sql(q, to_micros(now()));
        let limit = q.limit;
        self.run(move |c| {
            let mut memories = Vec::with_capacity(limit + 1);
            sql.each(c, |r| {
                memories.push(memory(r)?);
                Ok(())
            })?;
            let next_cursor = if memories.len() > limit {
                memories.truncate(limit);
                memories.last().map(|m| Cursor::after(m).encode())
            } else {
                None
            };
            Ok(Page {
                memories,
                next_cursor,
            })
        })
        .await
    }

    pub(super) async fn keyword(
        &self,
        filter: &Filter,
        terms: &[String],
        limit: usize,
    ) -> Result<Vec<(Memory, f32)>> {
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let sql = keyword_sql(COLS, filter, terms, limit);
        self.run(move |c| {
            let mut out = Vec::with_capacity(limit);
            sql.each(c, |r| {
                let score: f64 = r.get(11).map_err(db)?;
                out.push((memory(r)?, score as f32));
                Ok(())
            })?;
            Ok(out)
        })
        .await
    }

    pub(super) async fn keyword_ids(
        &self,
        filter: &Filter,
        terms: &[String],
        limit: usize,
    ) -> Result<Vec<(Uuid, f32)>> {
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let sql = keyword_sql("m.id", filter, terms, limit);
        self.run(move |c| {
            let mut out = Vec::with_capacity(limit);
            sql.each(c, |r| keyword_id(r, &mut out))?;
            Ok(out)
        })
        .await
    }

    /// Hybrid search's reads in one blocking task: the keyword ids, then
    /// `semantic` (the index search), then the rows of the first `want` ids
    /// `rank` makes of the two (the later ones only when SQL dropped some).
    /// One hand-off to the blocking pool instead of three: at 50 concurrent
    /// searches on 2 cores the switching cost more than the searches.
    pub(crate) async fn hybrid<S, R>(
        &self,
        filter: &Filter,
        terms: &[String],
        depth: usize,
        want: usize,
        semantic: S,
        rank: R,
    ) -> Result<HybridReads>
    where
        S: FnOnce() -> Result<Vec<(Uuid, f32)>> + Send + 'static,
        R: FnOnce(&[(Uuid, f32)], &[(Uuid, f32)]) -> Vec<Uuid> + Send + 'static,
    {
        let keyword_sql = (!terms.is_empty()).then(|| keyword_sql("m.id", filter, terms, depth));
        let filter = filter.clone();
        let now_us = to_micros(now());
        self.run(move |c| {
            let mut keyword = Vec::with_capacity(depth);
            if let Some(sql) = keyword_sql {
                sql.each(c, |r| keyword_id(r, &mut keyword))?;
            }
            let semantic = semantic()?;
            let ranked = rank(&semantic, &keyword);
            let mut rows = Vec::with_capacity(want);
            let mut asked = 0;
            while let Some(ids) = next_ids(&ranked, asked, rows.len(), want) {
                asked += ids.len();
                for chunk in ids.chunks(MAX_IN_LIST) {
                    fetch_sql(&filter, chunk, now_us).each(c, |r| {
                        rows.push(memory(r)?);
                        Ok(())
                    })?;
                }
            }
            Ok(HybridReads {
                keyword,
                semantic,
                rows,
            })
        })
        .await
    }

    pub(super) async fn fetch(&self, filter: &Filter, ids: &[Uuid]) -> Result<Vec<Memory>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let now_us = to_micros(now());
        let queries: Vec<Sql> = ids
            .chunks(MAX_IN_LIST)
            .map(|chunk| fetch_sql(filter, chunk, now_us))
            .collect();
        self.collect(queries, ids.len(), |r, out| {
            out.push(memory(r)?);
            Ok(())
        })
        .await
    }

    pub(super) async fn history(
        &self,
        user_id: &str,
        id: Uuid,
    ) -> Result<Option<Vec<HistoryEntry>>> {
        let user_id = user_id.to_string();
        // Owned by the user when the user has history for it: a deleted or
        // expired memory keeps its history (with the delete or expire entry).
        self.run(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT op, old_value, new_value, at FROM memory_history \
                     WHERE memory_id = ? AND user_id = ? ORDER BY hid",
                )
                .map_err(db)?;
            let mut rows = stmt
                .query(rusqlite::params![id.to_string(), user_id])
                .map_err(db)?;
            let parse = |s: Option<String>| -> Result<Option<serde_json::Value>> {
                s.map(|s| serde_json::from_str(&s).map_err(corrupt))
                    .transpose()
            };
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(db)? {
                out.push(HistoryEntry {
                    operation: r.get(0).map_err(db)?,
                    old_value: parse(r.get(1).map_err(db)?)?,
                    new_value: parse(r.get(2).map_err(db)?)?,
                    at: from_micros(r.get(3).map_err(db)?)?,
                });
            }
            Ok((!out.is_empty()).then_some(out))
        })
        .await
    }

    pub(super) async fn changes_after(&self, seq: i64, limit: usize) -> Result<Vec<Change>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT seq, memory_id, user_id, op FROM memory_changes \
                     WHERE seq > ? ORDER BY seq LIMIT ?",
                )
                .map_err(db)?;
            let mut rows = stmt.query([seq, limit]).map_err(db)?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(db)? {
                let id: Option<String> = r.get(1).map_err(db)?;
                out.push(Change {
                    seq: r.get(0).map_err(db)?,
                    memory_id: id
                        .map(|s| Uuid::parse_str(&s).map_err(corrupt))
                        .transpose()?,
                    user_id: r.get(2).map_err(db)?,
                    op: ChangeOp::parse(r.get_ref(3).map_err(db)?.as_str().map_err(db_from)?)?,
                });
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn last_change(&self) -> Result<i64> {
        self.run(|c| {
            let v: Option<i64> = c
                .prepare_cached("SELECT MAX(seq) FROM memory_changes")
                .map_err(db)?
                .query_row([], |r| r.get(0))
                .map_err(db)?;
            Ok(v.unwrap_or(0))
        })
        .await
    }

    /// See [`Store::nearest_exact`](super::Store::nearest_exact): one
    /// blocking task streams the newest matching embeddings through a
    /// [`Nearest`], row by row.
    pub(super) async fn nearest_exact(
        &self,
        filter: &Filter,
        query: &Embedding,
        k: usize,
        scan: usize,
    ) -> Result<ExactHits> {
        let mut sql = Sql::new(format!(
            "SELECT m.id, e.model, e.embedding FROM {ENTRY_FROM} WHERE e.model = "
        ));
        sql.bind(query.model.clone()).push(" AND");
        sql.filter(filter, to_micros(now()));
        sql.push(" ORDER BY m.created_at DESC, m.id DESC LIMIT ")
            .bind(i64::try_from(scan.saturating_add(1)).unwrap_or(i64::MAX));
        let mut nearest = Nearest::new(query, k);
        self.run(move |c| {
            let mut seen = 0;
            sql.each(c, |r| {
                seen += 1;
                if seen <= scan {
                    let id = Uuid::parse_str(text_at(r, 0)?).map_err(corrupt)?;
                    let blob = r.get_ref(2).map_err(db)?.as_blob().map_err(db_from)?;
                    nearest.offer(id, text_at(r, 1)?, blob);
                }
                Ok(())
            })?;
            Ok(ExactHits {
                hits: nearest.into_hits(),
                more: seen > scan,
            })
        })
        .await
    }

    pub(super) async fn index_entries(&self, ids: &[Uuid]) -> Result<Vec<IndexEntry>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let queries: Vec<Sql> = ids
            .chunks(MAX_IN_LIST)
            .map(|chunk| {
                let mut sql = Sql::new(format!(
                    "SELECT {ENTRY_COLS} FROM {ENTRY_FROM} WHERE m.id IN ("
                ));
                sql.bind_list(chunk.iter().map(|id| id.to_string()));
                sql.push(")");
                sql
            })
            .collect();
        self.collect(queries, ids.len(), |r, out| {
            out.push(entry(r)?);
            Ok(())
        })
        .await
    }

    pub(super) async fn scan_index_entries(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<IndexEntry>> {
        let after = after.map(|a| a.to_string()).unwrap_or_default();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |c| {
            let mut sql = Sql::new(format!(
                "SELECT {ENTRY_COLS} FROM {ENTRY_FROM} WHERE m.id > "
            ));
            sql.bind(after).push(" ORDER BY m.id LIMIT ").bind(limit);
            let mut out = Vec::new();
            sql.each(c, |r| {
                out.push(entry(r)?);
                Ok(())
            })?;
            Ok(out)
        })
        .await
    }

    pub(super) async fn unembedded(
        &self,
        model: &str,
        dimension: usize,
        after: Option<Uuid>,
        scan: usize,
    ) -> Result<UnembeddedPage> {
        let after = after.map(|a| a.to_string()).unwrap_or_default();
        let mut sql = Sql::new("SELECT m.id, CASE WHEN (e.model IS NOT ".to_string());
        sql.bind(model.to_string())
            .push(" OR length(e.embedding) <> ")
            .bind(i64::try_from(dimension * 4).unwrap_or(i64::MAX))
            .push(") AND (m.expires_at IS NULL OR m.expires_at > ")
            .bind(to_micros(now()))
            .push(
                ") THEN m.content END, m.content_hash \
                 FROM memories m LEFT JOIN memory_embeddings e ON e.rid = m.rid WHERE m.id > ",
            )
            .bind(after)
            .push(" ORDER BY m.id LIMIT ")
            .bind(i64::try_from(scan).unwrap_or(i64::MAX));
        self.run(move |c| {
            let mut page = UnembeddedPage::default();
            let mut seen = 0;
            let mut last = None;
            sql.each(c, |r| {
                let id = Uuid::parse_str(text_at(r, 0)?).map_err(corrupt)?;
                seen += 1;
                last = Some(id);
                let content: Option<String> = r.get(1).map_err(db)?;
                if let Some(content) = content {
                    page.memories.push(Unembedded {
                        id,
                        content,
                        content_hash: r.get(2).map_err(db)?,
                    });
                }
                Ok(())
            })?;
            page.next = last.filter(|_| seen >= scan);
            Ok(page)
        })
        .await
    }

    pub(super) async fn count(&self) -> Result<u64> {
        self.run(|c| {
            let n: i64 = c
                .prepare_cached("SELECT COUNT(*) FROM memories")
                .map_err(db)?
                .query_row([], |r| r.get(0))
                .map_err(db)?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }
}

/// `cols` and the keyword score (last column; see
/// [`Store::keyword`](super::Store::keyword)) of the memories of `filter`
/// holding any of `terms`, best first, the newest first among equals:
/// `(w + b / (1 + b)) / (n + 1)` for `w` of the `n` terms matched and the
/// BM25 score `b` (FTS5's `bm25()` is `-b`).
fn keyword_sql(cols: &str, filter: &Filter, terms: &[String], limit: usize) -> Sql {
    let key = user_key(&filter.user_id);
    let mut sql = Sql::new(format!("SELECT {cols}, ("));
    if let [_] = terms {
        // One term: every memory found holds it.
        sql.push("1");
    } else {
        for (i, t) in terms.iter().enumerate() {
            if i > 0 {
                sql.push(" + ");
            }
            sql.push(
                "(memory_terms.rowid IN (SELECT rowid FROM memory_terms WHERE memory_terms MATCH ",
            )
            .bind(match_expr(&key, std::slice::from_ref(t)))
            .push("))");
        }
    }
    sql.push(&format!(
        " + bm25(memory_terms) / (bm25(memory_terms) - 1.0)) / {}.0 AS score \
         FROM memory_terms JOIN memories m ON m.rid = memory_terms.rowid WHERE memory_terms MATCH ",
        terms.len() + 1
    ));
    sql.bind(match_expr(&key, terms)).push(" AND");
    sql.filter(filter, to_micros(now()));
    sql.push(" ORDER BY score DESC, m.id DESC LIMIT ")
        .bind(i64::try_from(limit).unwrap_or(i64::MAX));
    sql
}

/// A page of `q`, newest first: one backward range of the table, which is
/// clustered by `(user_id, created_at, id)` (a test checks the plan).
fn list_sql(q: &ListQuery, now_us: i64) -> Sql {
    let mut sql = Sql::new(format!("SELECT {COLS} FROM memories m WHERE"));
    sql.filter(&q.filter, now_us);
    if let Some(c) = q.cursor {
        sql.push(" AND (m.created_at < ").bind(c.created_us);
        sql.push(" OR (m.created_at = ").bind(c.created_us);
        sql.push(" AND m.id < ").bind(c.id.to_string()).push("))");
    }
    sql.push(" ORDER BY m.created_at DESC, m.id DESC LIMIT ")
        .bind(i64::try_from(q.limit + 1).unwrap_or(i64::MAX));
    sql
}

/// The memories of `filter` among `ids`, looked up by id: without statistics
/// SQLite guesses ten rows for a user and would read every memory of the
/// user instead (a test checks the plan).
/// What hybrid search read (see [`Readers::hybrid`]).
pub(crate) struct HybridReads {
    /// Keyword hits, best first.
    pub(crate) keyword: Vec<(Uuid, f32)>,
    /// Index hits, best first.
    pub(crate) semantic: Vec<(Uuid, f32)>,
    /// Live rows of the best fused ids.
    pub(crate) rows: Vec<Memory>,
}

/// One row of a keyword-ids query: `(id, score)`.
fn keyword_id(r: &Row<'_>, out: &mut Vec<(Uuid, f32)>) -> Result<()> {
    let score: f64 = r.get(1).map_err(db)?;
    out.push((
        Uuid::parse_str(text_at(r, 0)?).map_err(corrupt)?,
        score as f32,
    ));
    Ok(())
}

fn fetch_sql(filter: &Filter, ids: &[Uuid], now_us: i64) -> Sql {
    let mut sql = Sql::new(format!(
        "SELECT {COLS} FROM memories m INDEXED BY {ID_INDEX} WHERE m.id IN ("
    ));
    sql.bind_list(ids.iter().map(|id| id.to_string()));
    sql.push(") AND");
    sql.filter(filter, now_us);
    sql
}

fn get(c: &Connection, user_id: &str, id: Uuid) -> Result<Option<Memory>> {
    let mut sql = Sql::new(format!("SELECT {COLS} FROM memories m WHERE m.id = "));
    sql.bind(id.to_string())
        .push(" AND m.user_id = ")
        .bind(user_id.to_string())
        .push(" AND (m.expires_at IS NULL OR m.expires_at > ")
        .bind(to_micros(now()))
        .push(")");
    let mut out = None;
    sql.each(c, |r| {
        out = Some(memory(r)?);
        Ok(())
    })?;
    Ok(out)
}

/// SQL text with its parameters, built together.
struct Sql {
    text: String,
    params: Vec<Value>,
}

impl Sql {
    fn new(text: String) -> Self {
        Sql {
            text,
            params: Vec::new(),
        }
    }

    fn push(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }

    fn bind(&mut self, v: impl Into<Value>) -> &mut Self {
        self.text.push('?');
        self.params.push(v.into());
        self
    }

    /// Binds each value, comma-separated (the inside of an `IN (...)`).
    fn bind_list<V: Into<Value>>(&mut self, values: impl IntoIterator<Item = V>) -> &mut Self {
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.bind(v);
        }
        self
    }

    /// Appends the conditions of `f` (user, live, filters), as the write path does.
    fn filter(&mut self, f: &Filter, now_us: i64) {
        self.push(" m.user_id = ").bind(f.user_id.clone());
        self.push(" AND (m.expires_at IS NULL OR m.expires_at > ")
            .bind(now_us)
            .push(")");
        if let Some(a) = &f.agent_id {
            self.push(" AND m.agent_id = ").bind(a.clone());
        }
        if let Some(k) = &f.kind {
            self.push(" AND m.kind = ").bind(k.clone());
        }
        if let Some(s) = f.since {
            self.push(" AND m.created_at >= ").bind(to_micros(s));
        }
        if let Some(u) = f.until {
            self.push(" AND m.created_at <= ").bind(to_micros(u));
        }
        if !f.tags.is_empty() {
            self.push(match f.tag_mode {
                TagMode::Any => {
                    " AND EXISTS (SELECT 1 FROM json_each(m.tags) WHERE json_each.value IN ("
                }
                TagMode::All => {
                    " AND (SELECT COUNT(DISTINCT json_each.value) FROM json_each(m.tags) WHERE json_each.value IN ("
                }
            });
            self.bind_list(f.tags.iter().cloned());
            match f.tag_mode {
                TagMode::Any => self.push("))"),
                TagMode::All => self
                    .push(")) = ")
                    .bind(i64::try_from(f.tags.len()).unwrap_or(i64::MAX)),
            };
        }
        for (k, v) in &f.metadata {
            // The key is matched as text among the object's keys, not named
            // by a JSON path: SQLite's paths cannot hold a `"`.
            self.push(" AND EXISTS (SELECT 1 FROM json_each(m.metadata) AS j0 WHERE j0.key = ")
                .bind(k.clone())
                .push(" AND ");
            self.json_equals(0, v);
            self.push(")");
        }
    }

    /// The JSON value of the `json_each` row `j{depth}` equals `v`, as
    /// PostgreSQL's `jsonb` compares: numbers by value (`1` equals `1.0`),
    /// strings by text, arrays element by element, objects key by key in any
    /// order. (Comparing JSON texts said `1` and `1.0` differ.) The filter's
    /// size is bounded by `input::MAX_FILTER_VALUES`.
    fn json_equals(&mut self, depth: usize, v: &serde_json::Value) {
        use serde_json::Value as J;
        let (ty, val) = (format!("j{depth}.type"), format!("j{depth}.value"));
        let child = depth + 1;
        match v {
            J::Null => {
                self.push(&format!("{ty} = 'null'"));
            }
            J::Bool(b) => {
                self.push(&format!("{ty} = '{b}'"));
            }
            J::Number(n) => {
                self.push(&format!("{ty} IN ('integer', 'real') AND {val} = "));
                match n.as_i64() {
                    Some(i) => self.bind(i),
                    None => self.bind(n.as_f64().unwrap_or(f64::NAN)),
                };
            }
            J::String(s) => {
                self.push(&format!("{ty} = 'text' AND {val} = "))
                    .bind(s.clone());
            }
            // A container's text is read as JSON only once its type says it
            // is one (CASE fixes the order; a string's text is not JSON).
            J::Array(items) => {
                self.push(&format!(
                    "(CASE WHEN {ty} = 'array' THEN json_array_length({val}) = {}",
                    items.len()
                ));
                for (i, item) in items.iter().enumerate() {
                    self.push(&format!(
                        " AND EXISTS (SELECT 1 FROM json_each({val}) AS j{child} WHERE j{child}.key = {i} AND "
                    ));
                    self.json_equals(child, item);
                    self.push(")");
                }
                self.push(" ELSE 0 END)");
            }
            J::Object(map) => {
                self.push(&format!(
                    "(CASE WHEN {ty} = 'object' THEN (SELECT COUNT(*) FROM json_each({val})) = {}",
                    map.len()
                ));
                for (k, item) in map {
                    self.push(&format!(
                        " AND EXISTS (SELECT 1 FROM json_each({val}) AS j{child} WHERE j{child}.key = "
                    ))
                    .bind(k.clone())
                    .push(" AND ");
                    self.json_equals(child, item);
                    self.push(")");
                }
                self.push(" ELSE 0 END)");
            }
        }
    }

    /// Runs the query (prepared once per connection), calling `f` on each row.
    fn each(&self, c: &Connection, mut f: impl FnMut(&Row<'_>) -> Result<()>) -> Result<()> {
        let mut stmt = c.prepare_cached(&self.text).map_err(db)?;
        let mut rows = stmt
            .query(rusqlite::params_from_iter(self.params.iter()))
            .map_err(db)?;
        while let Some(r) = rows.next().map_err(db)? {
            f(r)?;
        }
        Ok(())
    }
}

fn text_at<'r>(r: &'r Row<'_>, i: usize) -> Result<&'r str> {
    r.get_ref(i).map_err(db)?.as_str().map_err(db_from)
}

fn tags(s: &str) -> Result<Vec<String>> {
    if s == "[]" {
        return Ok(Vec::new());
    }
    serde_json::from_str(s).map_err(corrupt)
}

/// A row of [`COLS`].
fn memory(r: &Row<'_>) -> Result<Memory> {
    let metadata = match text_at(r, 7)? {
        "{}" => serde_json::Map::new(),
        s => serde_json::from_str(s).map_err(corrupt)?,
    };
    let expires: Option<i64> = r.get(10).map_err(db)?;
    Ok(Memory {
        id: Uuid::parse_str(text_at(r, 0)?).map_err(corrupt)?,
        user_id: r.get(1).map_err(db)?,
        agent_id: r.get(2).map_err(db)?,
        run_id: r.get(3).map_err(db)?,
        kind: r.get(4).map_err(db)?,
        content: r.get(5).map_err(db)?,
        tags: tags(text_at(r, 6)?)?,
        metadata,
        created_at: from_micros(r.get(8).map_err(db)?)?,
        updated_at: from_micros(r.get(9).map_err(db)?)?,
        expires_at: expires.map(from_micros).transpose()?,
    })
}

/// A row of [`ENTRY_COLS`].
fn entry(r: &Row<'_>) -> Result<IndexEntry> {
    let blob = r.get_ref(7).map_err(db)?.as_blob().map_err(db_from)?;
    Ok(IndexEntry {
        id: Uuid::parse_str(text_at(r, 0)?).map_err(corrupt)?,
        user_id: r.get(1).map_err(db)?,
        agent_id: r.get(2).map_err(db)?,
        kind: r.get(3).map_err(db)?,
        tags: tags(text_at(r, 4)?)?,
        created_us: r.get(5).map_err(db)?,
        expires_us: r.get(6).map_err(db)?,
        embedding: Embedding {
            model: r.get(8).map_err(db)?,
            vector: bytes_to_vector(blob)?,
        },
    })
}

fn corrupt(e: impl std::fmt::Display) -> MemoryError {
    MemoryError::Corrupt(e.to_string())
}

/// A SQLite error of the read path, reported like any other database error.
#[derive(Debug)]
struct ReadError {
    message: String,
    code: Option<String>,
    source: rusqlite::Error,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl sqlx::error::DatabaseError for ReadError {
    fn message(&self) -> &str {
        &self.message
    }
    fn code(&self) -> Option<Cow<'_, str>> {
        self.code.as_deref().map(Cow::Borrowed)
    }
    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }
    fn kind(&self) -> sqlx::error::ErrorKind {
        sqlx::error::ErrorKind::Other
    }
}

fn db(source: rusqlite::Error) -> MemoryError {
    let code = match &source {
        rusqlite::Error::SqliteFailure(e, _) => Some(e.extended_code.to_string()),
        _ => None,
    };
    MemoryError::Database(sqlx::Error::Database(Box::new(ReadError {
        message: source.to_string(),
        code,
        source,
    })))
}

fn db_from(e: rusqlite::types::FromSqlError) -> MemoryError {
    corrupt(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The query plan of `sql` on a freshly migrated database.
    async fn plan(sql: &Sql) -> Vec<String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("m.db");
        super::super::SqliteStore::open(&format!("sqlite://{}", path.display()), 1)
            .await
            .expect("migrated store");
        let c = Connection::open(&path).expect("connection");
        let mut stmt = c
            .prepare(&format!("EXPLAIN QUERY PLAN {}", sql.text))
            .expect("the query prepares");
        stmt.query_map(rusqlite::params_from_iter(sql.params.iter()), |r| r.get(3))
            .expect("plan")
            .collect::<std::result::Result<_, _>>()
            .expect("plan rows")
    }

    /// The largest metadata filters the API accepts (`MAX_FILTER_VALUES`
    /// values, nested `MAX_FILTER_DEPTH` deep, siblings at every level) stay
    /// inside SQLite's expression depth limit: they prepare.
    #[tokio::test]
    async fn the_largest_metadata_filters_prepare() {
        use crate::input::{MAX_FILTER_DEPTH, MAX_FILTER_VALUES};
        use serde_json::{Map, Value, json};
        // Each level: `per - 1` scalars and the next level, under the first
        // or the last key (an AND chain is deeper on one side).
        let nested = |per: usize, first: bool, array: bool| {
            let mut v = json!(1);
            for _ in 1..MAX_FILTER_DEPTH {
                let scalars = (0..per - 1).map(|i| json!(i));
                v = if array {
                    let mut items: Vec<Value> = scalars.collect();
                    if first {
                        items.insert(0, v);
                    } else {
                        items.push(v);
                    }
                    Value::Array(items)
                } else {
                    let mut m: Map<String, Value> = scalars
                        .enumerate()
                        .map(|(i, x)| (format!("k{i}"), x))
                        .collect();
                    m.insert(if first { "a" } else { "z" }.into(), v);
                    Value::Object(m)
                };
            }
            v
        };
        let per = MAX_FILTER_VALUES / MAX_FILTER_DEPTH;
        let mut filters: Vec<Map<String, Value>> = Vec::new();
        for first in [true, false] {
            for array in [true, false] {
                let mut m = Map::new();
                m.insert("n".into(), nested(per, first, array));
                filters.push(m);
            }
        }
        // Every value but one chain at the top level, the chain first.
        let mut lopsided: Map<String, Value> = (0..MAX_FILTER_VALUES - MAX_FILTER_DEPTH)
            .map(|i| (format!("w{i}"), json!(i)))
            .collect();
        lopsided.insert("a".into(), nested(1, true, false));
        filters.push(lopsided);
        filters.push(
            (0..MAX_FILTER_VALUES)
                .map(|i| (format!("w{i}"), json!(i)))
                .collect(),
        );
        for metadata in filters {
            let filter = Filter {
                user_id: "u1".into(),
                tags: vec!["a".into(), "b".into()],
                tag_mode: TagMode::All,
                metadata,
                ..Filter::default()
            };
            let ids: Vec<Uuid> = (0..MAX_IN_LIST).map(|_| Uuid::now_v7()).collect();
            assert!(!plan(&fetch_sql(&filter, &ids, 0)).await.is_empty());
            assert!(
                !plan(&keyword_sql(COLS, &filter, &["x".into()], 10))
                    .await
                    .is_empty()
            );
        }
    }

    #[tokio::test]
    async fn fetch_by_ids_uses_the_id_index() {
        let filter = Filter {
            user_id: "u1".into(),
            tags: vec!["a".into()],
            ..Filter::default()
        };
        let ids: Vec<Uuid> = (0..18).map(|_| Uuid::now_v7()).collect();
        let plan = plan(&fetch_sql(&filter, &ids, 0)).await;
        assert!(
            plan.iter()
                .any(|p| p.contains(&format!("USING INDEX {ID_INDEX} (id=?"))),
            "{plan:?}"
        );
        assert!(
            !plan.iter().any(|p| p.contains("PRIMARY KEY (user_id=?)")),
            "{plan:?}"
        );
    }

    #[tokio::test]
    async fn a_list_page_is_one_range_of_the_table_in_order() {
        for tags in [vec![], vec!["a".to_string()]] {
            let q = ListQuery {
                filter: Filter {
                    user_id: "u1".into(),
                    tags,
                    ..Filter::default()
                },
                limit: 50,
                cursor: Some(Cursor {
                    created_us: 5,
                    id: Uuid::now_v7(),
                }),
            };
            let plan = plan(&list_sql(&q, 0)).await;
            assert!(
                plan.iter()
                    .any(|p| p.starts_with("SEARCH m USING PRIMARY KEY (user_id=?")),
                "{plan:?}"
            );
            assert!(
                !plan.iter().any(|p| p.contains("TEMP B-TREE")),
                "no sort: {plan:?}"
            );
        }
    }
}
