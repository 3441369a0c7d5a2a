//! Cost tracking and per-key budgets (`[pricing]`, a key's `max_budget` and
//! `budget_period`): the [`SpendService`] built at start-up, the [`Charge`]
//! each request carries (in its key's [`Caller`]), and `GET /v1/spend`.
//!
//! On only when `[pricing]` has an entry or some key has a `max_budget`;
//! off, requests carry no charge and pay nothing. A charge is taken where
//! the answer's usage is known, next to the key's `tokens_per_minute`
//! ([`crate::auth::TokenMeter`]): a whole chat or text completion in
//! `gateway::generate`, a stream as it ends ([`crate::gateway::StreamMeter`]),
//! a remote embeddings answer. Cache hits never reach them, so they cost
//! nothing. Admission (429 `insufficient_quota` once the period's spend
//! reaches the budget) is in the key middleware, [`crate::auth`].

use crate::StartupError;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::{AppState, ReadyCheck, ReadyStatus};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use std::sync::Arc;
use uat_config::Config;
use uat_spend::{Account, KeyBudget, Ledger, LedgerOptions, Pricing};
use uat_types::Usage;

/// `x-uat-cost`: what a non-streamed answer from upstream cost in USD
/// (LiteLLM's `x-litellm-response-cost`), when its model is priced.
pub static X_UAT_COST: HeaderName = HeaderName::from_static("x-uat-cost");

/// Pricing and the ledger of the keys' spend.
pub struct SpendService {
    pricing: Pricing,
    ledger: Ledger,
    keys: bool,
}

impl SpendService {
    /// Opens the ledger in `storage.database_url` when `[pricing]` has an
    /// entry or a key has a budget; `None` otherwise (nothing is priced).
    /// A database that cannot be reached stops the start-up.
    pub async fn init(config: &Config) -> Result<Option<Arc<Self>>, StartupError> {
        let budgets = config.auth.has_budgets();
        if config.pricing.is_empty() && !budgets {
            return Ok(None);
        }
        if config.pricing.is_empty() {
            tracing::warn!(
                "some API keys have a max_budget but [pricing] is empty: no answer can be priced, so no budget is ever spent"
            );
        }
        let url = config.storage.database_url();
        if !config.storage.is_postgres() {
            std::fs::create_dir_all(&config.storage.data_dir).map_err(|e| {
                StartupError::subsystem(
                    "spend",
                    format!("cannot create {}: {e}", config.storage.data_dir.display()),
                )
            })?;
        }
        let keys: Vec<KeyBudget> = config
            .auth
            .keys
            .iter()
            .map(|k| KeyBudget {
                name: k.name.clone(),
                max_budget: k.max_budget,
                period: k.budget_period,
            })
            .collect();
        let ledger = Ledger::open(&url, &keys, LedgerOptions::default())
            .await
            .map_err(|e| {
                StartupError::subsystem("spend", format!("{}: {e}", uat_config::mask_url(&url)))
            })?;
        Ok(Some(Arc::new(SpendService {
            pricing: Pricing::new(&config.pricing),
            ledger,
            keys: config.auth.enabled(),
        })))
    }

    /// The ledger of the keys' spend.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The charge of the key `name`'s requests.
    pub(crate) fn charge_for(self: &Arc<Self>, name: &str) -> Charge {
        Charge {
            spend: self.clone(),
            account: self.ledger.account(name).cloned(),
        }
    }

    /// At shutdown, within `limit`: writes the spend not written yet and
    /// closes the ledger ([`Ledger::close`]: when none of its writes failed,
    /// this replica's rows are folded into the keys' `base` rows, so
    /// restarts do not pile rows up; a fold that fails is logged by the
    /// ledger, not here). Spend added later (a stream still running) is not
    /// written.
    pub async fn close(&self, limit: std::time::Duration) {
        match tokio::time::timeout(limit, self.ledger.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "spend ledger: the last write failed"),
            Err(_) => tracing::warn!(
                ?limit,
                "spend ledger: the last write (or the fold after it) did not finish in time"
            ),
        }
    }

    /// The readiness line `spend`: degraded (never critical) while writes
    /// or read-backs fail (the detail says which); requests are served and
    /// the spend kept in memory meanwhile.
    pub fn ready(&self) -> ReadyCheck {
        let failing = self.ledger.failing();
        let ok = failing.is_none();
        ReadyCheck {
            name: "spend".into(),
            status: if ok {
                ReadyStatus::Ok
            } else {
                ReadyStatus::Degraded
            },
            critical: false,
            detail: Some(match failing {
                None => format!(
                    "{} keys, {}",
                    self.ledger.accounts().len(),
                    self.ledger.backend()
                ),
                Some(what) => format!(
                    "the database fails the ledger's {what}: spend kept in memory, writes retried every second, read-backs at their next turn"
                ),
            }),
        }
    }
}

/// What a request's answers are charged to: its key's account (none
/// without keys: only the metric counts them). Cheap to clone (two `Arc`s).
#[derive(Clone)]
pub(crate) struct Charge {
    spend: Arc<SpendService>,
    account: Option<Arc<Account>>,
}

impl std::fmt::Debug for Charge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Charge")
            .field("key", &self.account.as_ref().map(|a| a.name()))
            .finish()
    }
}

impl Charge {
    /// The charge of a request made by `caller` (its [`Caller`]
    /// extension): its key's; without keys (no caller) one that only counts
    /// the metric; none when spend tracking is off.
    pub(crate) fn for_caller(caller: Option<&Caller>, state: &AppState) -> Option<Charge> {
        match caller {
            Some(c) => c.charge().cloned(),
            None => state.spend.as_ref().map(|s| Charge {
                spend: s.clone(),
                account: None,
            }),
        }
    }

    /// Prices an answer from upstream and charges it: to the key's
    /// account, and to `uat_spend_usd_total{key,model}` (`requested`, the
    /// name the client asked for). Returns its cost in nano-USD; `None`
    /// (counted in `uat_spend_unpriced_total`) when the model has no price
    /// or the answer reported no usage.
    ///
    /// An answer that reported no usage (a stream cut short or left by its
    /// client, an upstream that ignores `stream_options`) is priced by
    /// `estimate` (what the token limit takes too) and counted in
    /// `uat_spend_estimated_total`: the upstream bills it all the same.
    pub(crate) fn answer(
        &self,
        requested: &str,
        provider: &str,
        model: &str,
        usage: Option<&Usage>,
        estimate: impl FnOnce() -> Usage,
    ) -> Option<u64> {
        let estimated;
        let usage = match usage {
            Some(u) => u,
            None => {
                uat_spend::record_estimated(requested);
                estimated = estimate();
                &estimated
            }
        };
        let cost = self
            .spend
            .pricing
            .cost_nanos(provider, model, requested, usage);
        let Some(nanos) = cost else {
            uat_spend::record_unpriced(requested);
            return None;
        };
        if let Some(a) = &self.account {
            a.add(nanos);
        }
        uat_spend::record(
            self.account.as_ref().map_or("", |a| a.name()),
            requested,
            nanos,
        );
        Some(nanos)
    }

    /// The 429 `insufficient_quota` of a key whose period's spend has
    /// reached its budget; `None` while it has some left (or no budget).
    pub(crate) fn refusal(&self) -> Option<ApiError> {
        let a = self.account.as_ref()?;
        let budget = a.budget_nanos()?;
        let now = uat_spend::unix_now();
        let spent = a.spent_at(now);
        if spent < budget {
            return None;
        }
        let end = a.period().end_at(now);
        let until = match end {
            Some(end) => format!(
                " until its budget period resets in {}",
                uat_config::duration::format(std::time::Duration::from_secs(
                    end.saturating_sub(now).unsigned_abs()
                ))
            ),
            None => " (its budget does not reset)".into(),
        };
        let message = format!(
            "the API key `{}` has spent ${} of its budget of ${}{until}",
            a.name(),
            uat_spend::format_usd(spent),
            uat_spend::format_usd(budget),
        );
        Some(ApiError::insufficient_quota(message))
    }

    /// For a key with a budget, every target that may serve `requested`
    /// must have a price: an unpriced answer would cost its budget nothing.
    /// A 403 naming the model otherwise (before any upstream call).
    pub(crate) fn check_priced(
        &self,
        router: &uat_router::Router,
        resolved: &uat_router::Resolved,
        requested: &str,
    ) -> Result<(), ApiError> {
        let Some(a) = self.account.as_ref().filter(|a| a.budget_nanos().is_some()) else {
            return Ok(());
        };
        let pricing = &self.spend.pricing;
        match router
            .targets(resolved)
            .find(|(provider, model)| pricing.lookup(provider, model, requested).is_none())
        {
            None => Ok(()),
            Some((provider, model)) => {
                let mut e = ApiError::forbidden(format!(
                    "the API key `{}` has a budget, and `{requested}` (served by `{provider}/{model}`) has no price in [pricing]: an answer of it would cost the budget nothing",
                    a.name()
                ));
                e.code = Some("model_not_priced");
                Err(e)
            }
        }
    }
}

/// Sets `x-uat-cost` on a response.
pub(crate) fn set_cost(resp: &mut Response, nanos: u64) {
    if let Ok(v) = HeaderValue::from_str(&uat_spend::format_usd(nanos)) {
        resp.headers_mut().insert(X_UAT_COST.clone(), v);
    }
}

/// The subsystem's routes.
pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/spend", get(spend))
}

/// One account as `GET /v1/spend` shows it.
fn account_json(a: &Account, now: i64) -> Value {
    let period = a.period();
    let resets = period.length().is_some();
    json!({
        "key": a.name(),
        "spend": uat_spend::usd(a.spent_at(now)),
        "max_budget": a.budget_nanos().map(uat_spend::usd),
        "period": period.length().map(uat_config::duration::format),
        "period_start": resets.then(|| period.start_at(now)),
        "period_end": period.end_at(now),
    })
}

/// `GET /v1/spend`: the caller's key's spend of its current period; an
/// admin key gets every key's, as a list. 404 without keys, or when spend
/// tracking is off.
async fn spend(State(state): State<AppState>, caller: Option<axum::Extension<Caller>>) -> Response {
    let Some(axum::Extension(caller)) = caller else {
        return ApiError::not_found(
            "GET /v1/spend reports the spend of API keys, and none are configured ([[auth.keys]])",
        )
        .into_response();
    };
    let Some(svc) = state.spend.as_ref().filter(|s| s.keys) else {
        return ApiError::not_found(
            "spend tracking is off: set [pricing] (and a key's max_budget) to track what keys spend",
        )
        .into_response();
    };
    let now = uat_spend::unix_now();
    if caller.is_admin() {
        let data: Vec<Value> = svc
            .ledger
            .accounts()
            .iter()
            .map(|a| account_json(a, now))
            .collect();
        return axum::Json(json!({ "object": "list", "data": data })).into_response();
    }
    match caller.name().and_then(|n| svc.ledger.account(n)) {
        Some(a) => axum::Json(account_json(a, now)).into_response(),
        None => ApiError::not_found("this API key has no spend account").into_response(),
    }
}
