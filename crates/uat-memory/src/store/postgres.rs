//! PostgreSQL store: `tsvector` of user-scoped terms + GIN for keyword search, GIN on tags,
//! `(user_id, created_at DESC, id DESC)` for lists, bulk writes with `UNNEST`.
//!
//! The change log is appended under a transaction-scoped advisory lock, so
//! change sequence numbers become visible in commit order and a replica
//! tailing `seq > last` never skips a change that commits late.

use super::{
    MAX_IN_LIST, Nearest, Resolved, Slot, Store, apply_patch, history_json, merge_duplicate,
    resolve_duplicates,
};
use crate::error::{MemoryError, Result};
use crate::keyword::{self, index_text, tsquery, user_key};
use crate::types::{
    Change, ChangeOp, Cursor, Embedding, ExactHits, Filter, HistoryEntry, IndexEntry, ListQuery,
    Memory, NewEmbedding, NewRow, Page, Patch, TagMode, Unembedded, UnembeddedPage, WriteOutcome,
    bytes_to_vector, from_micros, now, vector_to_bytes,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, QueryBuilder, Row};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use time::OffsetDateTime;
use uuid::Uuid;

const COLS: &str = "m.id, m.user_id, m.agent_id, m.run_id, m.kind, m.content, m.tags, m.metadata, m.created_at, m.updated_at, m.expires_at";

/// Embeddings read per page by [`Store::nearest_exact`].
const EXACT_PAGE: usize = 1000;

/// Advisory lock keys (arbitrary constants).
const MIGRATION_LOCK: i64 = 0x7561_745f_6d65_6d01;
const CHANGE_LOCK: i64 = 0x7561_745f_6d65_6d02;

const MIGRATIONS: &[(i64, &[&str])] = &[
    (
        1,
        &[
        "CREATE TABLE memories (
            id UUID PRIMARY KEY,
            user_id TEXT NOT NULL,
            agent_id TEXT,
            run_id TEXT,
            kind TEXT,
            content TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            dedupe_key TEXT,
            tags TEXT[] NOT NULL DEFAULT '{}',
            metadata JSONB NOT NULL DEFAULT '{}',
            created_at TIMESTAMPTZ NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL,
            expires_at TIMESTAMPTZ,
            embedding BYTEA,
            embedding_model TEXT,
            tsv TSVECTOR GENERATED ALWAYS AS
                (to_tsvector('simple'::regconfig, regexp_replace(content, '[^[:alnum:]]+', ' ', 'g'))) STORED
        )",
        "CREATE INDEX memories_user_created_idx ON memories (user_id, created_at DESC, id DESC)",
        "CREATE INDEX memories_tags_gin ON memories USING GIN (tags)",
        "CREATE INDEX memories_tsv_gin ON memories USING GIN (tsv)",
        "CREATE INDEX memories_hash_idx ON memories (content_hash)",
        "CREATE UNIQUE INDEX memories_dedupe_idx ON memories (user_id, dedupe_key) WHERE dedupe_key IS NOT NULL",
        "CREATE TABLE memory_history (
            hid BIGSERIAL PRIMARY KEY,
            memory_id UUID NOT NULL,
            user_id TEXT NOT NULL,
            op TEXT NOT NULL,
            old_value JSONB,
            new_value JSONB,
            at TIMESTAMPTZ NOT NULL
        )",
        "CREATE INDEX memory_history_memory_idx ON memory_history (memory_id, hid)",
        "CREATE INDEX memory_history_user_idx ON memory_history (user_id)",
        "CREATE TABLE memory_changes (
            seq BIGSERIAL PRIMARY KEY,
            memory_id UUID,
            user_id TEXT NOT NULL,
            op TEXT NOT NULL,
            at TIMESTAMPTZ NOT NULL
        )",
        ],
    ),
    // The full-text index holds user-scoped terms made in Rust (see
    // `keyword`): a search reads the user's own short posting lists instead
    // of every user's. `fill_terms` fills the column after these statements.
    (
        TERMS_MIGRATION,
        &[
            "ALTER TABLE memories DROP COLUMN tsv",
            "ALTER TABLE memories ADD COLUMN terms TSVECTOR NOT NULL DEFAULT ''::tsvector",
            // Embeddings leave the row: 1.5 KiB of vector made rows 2 KiB, so
            // the table outgrew shared_buffers and every list or keyword
            // search read a heap page per memory from the OS. (Dropped
            // columns keep their bytes in old rows until those are rewritten.)
            "CREATE TABLE memory_embeddings (
                id UUID PRIMARY KEY REFERENCES memories (id) ON DELETE CASCADE,
                embedding BYTEA NOT NULL,
                model TEXT NOT NULL
            )",
            "INSERT INTO memory_embeddings (id, embedding, model)
             SELECT id, embedding, embedding_model FROM memories
             WHERE embedding IS NOT NULL AND embedding_model IS NOT NULL",
            "ALTER TABLE memories DROP COLUMN embedding",
            "ALTER TABLE memories DROP COLUMN embedding_model",
        ],
    ),
    // Retention: expired memories are purged (found by their expiry) and the
    // change log is pruned; the horizon remembers how far, so an index that
    // applied less knows it missed changes.
    (
        3,
        &[
            "CREATE INDEX memories_expires_idx ON memories (expires_at) WHERE expires_at IS NOT NULL",
            "CREATE TABLE memory_change_horizon (
                id INT PRIMARY KEY CHECK (id = 1),
                pruned_through BIGINT NOT NULL
            )",
            "INSERT INTO memory_change_horizon (id, pruned_through) VALUES (1, 0)",
        ],
    ),
    // A write looks for duplicates by user and hash (`live_by_hash`): with
    // the index on the hash alone, PostgreSQL read every user's copy of a
    // common fact.
    (
        4,
        &[
            "CREATE INDEX memories_user_hash_idx ON memories (user_id, content_hash)",
            "DROP INDEX memories_hash_idx",
        ],
    ),
    // Keyword terms lose their accents (`keyword::fold`): `fill_terms`
    // indexes again every memory whose content is not plain ASCII.
    (FOLD_MIGRATION, &[]),
    // Runs of Chinese and Japanese characters make bigrams and unigrams
    // instead of one term per run (`keyword`): `fill_terms` indexes again
    // every memory whose folded content holds one (`keyword::holds_cjk`).
    (CJK_MIGRATION, &[]),
];

/// The migration after whose statements `fill_terms` indexes every memory
/// and builds the GIN index.
const TERMS_MIGRATION: i64 = 2;
/// The migration after whose statements `fill_terms` indexes again the
/// memories whose terms [`crate::keyword::fold`] changed.
const FOLD_MIGRATION: i64 = 5;
/// The migration after whose statements `fill_terms` indexes again the
/// memories holding CJK characters, whose runs now make bigrams.
const CJK_MIGRATION: i64 = 6;

/// The PostgreSQL implementation of [`Store`].
pub struct PgStore {
    pool: PgPool,
    /// The last change-log position committed through this handle.
    local_seq: AtomicI64,
}

impl PgStore {
    /// Connects to `url` and migrates the schema in the default `search_path`.
    pub async fn open(url: &str, max_connections: u32) -> Result<Self> {
        Self::connect(PgConnectOptions::from_str(url)?, max_connections).await
    }

    /// Connects with every table in `schema` (created when missing): lets
    /// tests and several deployments share one database.
    pub async fn open_in_schema(url: &str, max_connections: u32, schema: &str) -> Result<Self> {
        if schema.is_empty()
            || !schema
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(MemoryError::invalid(
                "schema",
                "must be letters, digits and underscores",
            ));
        }
        let base = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(base.clone())
            .await?;
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .execute(&pool)
            .await?;
        pool.close().await;
        Self::connect(base.options([("search_path", schema)]), max_connections).await
    }

    async fn connect(opts: PgConnectOptions, max_connections: u32) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        migrate(&pool).await?;
        Ok(PgStore {
            pool,
            local_seq: AtomicI64::new(0),
        })
    }

    fn committed(&self, seq: i64) {
        self.local_seq.fetch_max(seq, Ordering::AcqRel);
    }

    /// The pool (for benchmarks, EXPLAIN tests and diagnostics).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

async fn migrate(pool: &PgPool) -> Result<()> {
    migrate_through(pool, i64::MAX).await
}

/// Applies the migrations up to `last` (tests stop at an older schema).
async fn migrate_through(pool: &PgPool, last: i64) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS memory_schema_migrations (version BIGINT PRIMARY KEY, at TIMESTAMPTZ NOT NULL)",
    )
    .execute(&mut *tx)
    .await?;
    let done: Vec<i64> = sqlx::query_scalar("SELECT version FROM memory_schema_migrations")
        .fetch_all(&mut *tx)
        .await?;
    for (version, stmts) in MIGRATIONS {
        if done.contains(version) || *version > last {
            continue;
        }
        for s in *stmts {
            sqlx::query(s).execute(&mut *tx).await?;
        }
        match *version {
            TERMS_MIGRATION => {
                fill_terms(&mut tx, |_| true).await?;
                sqlx::query("CREATE INDEX memories_terms_gin ON memories USING GIN (terms)")
                    .execute(&mut *tx)
                    .await?;
            }
            FOLD_MIGRATION => fill_terms(&mut tx, |content| !content.is_ascii()).await?,
            CJK_MIGRATION => fill_terms(&mut tx, keyword::holds_cjk).await?,
            _ => {}
        }
        sqlx::query("INSERT INTO memory_schema_migrations (version, at) VALUES ($1, now())")
            .bind(version)
            .execute(&mut *tx)
            .await?;
        tracing::info!(version, "memory: applied PostgreSQL migration");
    }
    tx.commit().await?;
    Ok(())
}

/// Fills `terms` (`keyword::index_text`) for the memories whose content is
/// `stale` (every memory for migration 2; for a later one, those whose
/// terms an older `index_text` made otherwise: content that is not plain
/// ASCII, whose terms were made before `keyword::fold` took accents off;
/// content holding CJK characters once folded, `keyword::holds_cjk`, whose
/// runs were one term each before they made bigrams).
///
/// Every memory is read, 500 at a time in id order (each page a range of
/// the primary key), and picked in Rust, as on SQLite: picking them in SQL
/// (a regular expression of CJK characters) made each page a scan and a
/// sort of the whole table on a large one, could not see what folding
/// makes (the Kangxi radical `⼈` is `人`), and bound characters that a
/// database in another encoding than UTF-8 cannot hold, so its migration
/// failed. Indexing a memory again only replaces its terms with the same,
/// so a memory picked needlessly costs time only.
async fn fill_terms(tx: &mut sqlx::PgConnection, stale: fn(&str) -> bool) -> Result<()> {
    let mut after = Uuid::nil();
    loop {
        let rows: Vec<(Uuid, String, String)> = sqlx::query_as(
            "SELECT id, user_id, content FROM memories WHERE id > $1 ORDER BY id LIMIT 500",
        )
        .bind(after)
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = rows.last() else {
            break;
        };
        after = last.0;
        let (ids, texts): (Vec<Uuid>, Vec<String>) = rows
            .into_iter()
            .filter(|(_, _, content)| stale(content))
            .map(|(id, user, content)| (id, index_text(&user_key(&user), &content)))
            .unzip();
        if ids.is_empty() {
            continue;
        }
        sqlx::query(
            "UPDATE memories m SET terms = to_tsvector('simple'::regconfig, u.t) \
             FROM UNNEST($1::uuid[], $2::text[]) AS u(id, t) WHERE m.id = u.id",
        )
        .bind(ids)
        .bind(texts)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

fn corrupt(e: impl std::fmt::Display) -> MemoryError {
    MemoryError::Corrupt(e.to_string())
}

fn decode(row: &PgRow) -> Result<Memory> {
    let Json(metadata): Json<serde_json::Map<String, serde_json::Value>> =
        row.try_get("metadata")?;
    Ok(Memory {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        agent_id: row.try_get("agent_id")?,
        run_id: row.try_get("run_id")?,
        kind: row.try_get("kind")?,
        content: row.try_get("content")?,
        tags: row.try_get("tags")?,
        metadata,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        expires_at: row.try_get("expires_at")?,
    })
}

/// Columns of an [`IndexEntry`]: a memory `m` joined with its embedding `e`.
const ENTRY_SELECT: &str = "SELECT m.id, m.user_id, m.agent_id, m.kind, m.tags, m.created_at, m.expires_at, \
     e.embedding, e.model FROM memories m JOIN memory_embeddings e ON e.id = m.id";

fn decode_entry(row: &PgRow) -> Result<IndexEntry> {
    let blob: Vec<u8> = row.try_get("embedding")?;
    let created: OffsetDateTime = row.try_get("created_at")?;
    let expires: Option<OffsetDateTime> = row.try_get("expires_at")?;
    Ok(IndexEntry {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        agent_id: row.try_get("agent_id")?,
        kind: row.try_get("kind")?,
        tags: row.try_get("tags")?,
        created_us: crate::types::to_micros(created),
        expires_us: expires.map(crate::types::to_micros),
        embedding: Embedding {
            model: row.try_get("model")?,
            vector: bytes_to_vector(&blob)?,
        },
    })
}

/// `cols` and the keyword score (as `score`; see [`Store::keyword`]) of the
/// memories of `filter` holding any of `terms`, best first, the newest first
/// among equals: `(w + r / (1 + r)) / (n + 1)` for `w` of the `n` terms
/// matched and `r` the `ts_rank` (normalization 32 is `r / (1 + r)`).
fn keyword_query<'a>(
    cols: &str,
    filter: &Filter,
    terms: &[String],
    limit: usize,
    at: OffsetDateTime,
) -> QueryBuilder<'a, Postgres> {
    let key = user_key(&filter.user_id);
    let tsq = tsquery(&key, terms);
    let mut qb = QueryBuilder::<Postgres>::new(format!("SELECT {cols}, ("));
    if let [_] = terms {
        // One term: every memory found holds it.
        qb.push("1");
    } else {
        for (i, t) in terms.iter().enumerate() {
            if i > 0 {
                qb.push(" + ");
            }
            qb.push("(m.terms @@ to_tsquery('simple'::regconfig, ")
                .push_bind(tsquery(&key, std::slice::from_ref(t)))
                .push("))::int");
        }
    }
    qb.push(" + ts_rank(m.terms, to_tsquery('simple'::regconfig, ")
        .push_bind(tsq.clone())
        .push(format!(
            "), 32)::float8) / {} AS score FROM memories m WHERE",
            terms.len() + 1
        ));
    push_filter(&mut qb, filter, at);
    qb.push(" AND m.terms @@ to_tsquery('simple'::regconfig, ")
        .push_bind(tsq)
        .push(")");
    qb.push(" ORDER BY score DESC, m.id DESC LIMIT ")
        .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
    qb
}

fn push_filter(qb: &mut QueryBuilder<'_, Postgres>, f: &Filter, at: OffsetDateTime) {
    qb.push(" m.user_id = ").push_bind(f.user_id.clone());
    qb.push(" AND (m.expires_at IS NULL OR m.expires_at > ")
        .push_bind(at)
        .push(")");
    if let Some(a) = &f.agent_id {
        qb.push(" AND m.agent_id = ").push_bind(a.clone());
    }
    if let Some(k) = &f.kind {
        qb.push(" AND m.kind = ").push_bind(k.clone());
    }
    if let Some(s) = f.since {
        qb.push(" AND m.created_at >= ").push_bind(s);
    }
    if let Some(u) = f.until {
        qb.push(" AND m.created_at <= ").push_bind(u);
    }
    if !f.tags.is_empty() {
        match f.tag_mode {
            TagMode::Any => qb.push(" AND m.tags && "),
            TagMode::All => qb.push(" AND m.tags @> "),
        };
        qb.push_bind(f.tags.clone()).push("::text[]");
    }
    for (k, v) in &f.metadata {
        qb.push(" AND (m.metadata -> ")
            .push_bind(k.clone())
            .push(") = ");
        qb.push_bind(Json(v.clone())).push("::jsonb");
    }
}

/// Appends change records under the change lock (held until commit);
/// returns the last position written (0 when `changes` is empty).
async fn record_changes(
    tx: &mut sqlx::PgConnection,
    changes: &[(Option<Uuid>, String, ChangeOp)],
    at: OffsetDateTime,
) -> Result<i64> {
    if changes.is_empty() {
        return Ok(0);
    }
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(CHANGE_LOCK)
        .execute(&mut *tx)
        .await?;
    let ids: Vec<Option<Uuid>> = changes.iter().map(|c| c.0).collect();
    let users: Vec<String> = changes.iter().map(|c| c.1.clone()).collect();
    let ops: Vec<String> = changes.iter().map(|c| c.2.as_str().to_string()).collect();
    let last: Option<i64> = sqlx::query_scalar(
        "WITH ins AS (INSERT INTO memory_changes (memory_id, user_id, op, at) \
         SELECT u.id, u.user_id, u.op, $4 FROM UNNEST($1::uuid[], $2::text[], $3::text[]) WITH ORDINALITY AS u(id, user_id, op, n) ORDER BY u.n \
         RETURNING seq) SELECT MAX(seq) FROM ins",
    )
    .bind(ids)
    .bind(users)
    .bind(ops)
    .bind(at)
    .fetch_one(&mut *tx)
    .await?;
    Ok(last.unwrap_or(0))
}

async fn record_history(
    tx: &mut sqlx::PgConnection,
    m: &Memory,
    op: &str,
    old: Option<&Memory>,
    new: Option<&Memory>,
    at: OffsetDateTime,
) -> Result<()> {
    sqlx::query("INSERT INTO memory_history (memory_id, user_id, op, old_value, new_value, at) VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6)")
        .bind(m.id)
        .bind(&m.user_id)
        .bind(op)
        .bind(old.map(history_json).transpose()?)
        .bind(new.map(history_json).transpose()?)
        .bind(at)
        .execute(tx)
        .await?;
    Ok(())
}

/// The oldest memory of each `(user, content hash)` of `pairs` live at `at`,
/// locked until the transaction ends: a deduplicated write may change it, and
/// a concurrent one must merge into what this one leaves, not into what both
/// read. One lookup of the index on `(user_id, content_hash)` per pair.
async fn live_by_hash(
    tx: &mut sqlx::PgConnection,
    pairs: &[(String, String)],
    at: OffsetDateTime,
) -> Result<HashMap<(String, String), Memory>> {
    let mut out = HashMap::new();
    if pairs.is_empty() {
        return Ok(out);
    }
    let users: Vec<String> = pairs.iter().map(|p| p.0.clone()).collect();
    let hashes: Vec<String> = pairs.iter().map(|p| p.1.clone()).collect();
    for r in sqlx::query(&live_by_hash_sql())
        .bind(users)
        .bind(hashes)
        .bind(at)
        .fetch_all(&mut *tx)
        .await?
    {
        let m = decode(&r)?;
        let h: String = r.try_get("content_hash")?;
        out.entry((m.user_id.clone(), h)).or_insert(m);
    }
    Ok(out)
}

/// The query of [`live_by_hash`]: `$1` users, `$2` hashes, `$3` the time.
fn live_by_hash_sql() -> String {
    format!(
        "SELECT {COLS}, m.content_hash FROM memories m JOIN UNNEST($1::text[], $2::text[]) AS k(user_id, content_hash) \
         ON m.user_id = k.user_id AND m.content_hash = k.content_hash \
         WHERE (m.expires_at IS NULL OR m.expires_at > $3) ORDER BY m.created_at, m.id FOR UPDATE OF m"
    )
}

async fn bulk_insert(tx: &mut sqlx::PgConnection, rows: &[&NewRow]) -> Result<Vec<Uuid>> {
    let mut ids = Vec::with_capacity(rows.len());
    let mut users = Vec::with_capacity(rows.len());
    let mut agents = Vec::with_capacity(rows.len());
    let mut runs = Vec::with_capacity(rows.len());
    let mut kinds = Vec::with_capacity(rows.len());
    let mut contents = Vec::with_capacity(rows.len());
    let mut hashes = Vec::with_capacity(rows.len());
    let mut keys = Vec::with_capacity(rows.len());
    let mut tags = Vec::with_capacity(rows.len());
    let mut metas = Vec::with_capacity(rows.len());
    let mut created = Vec::with_capacity(rows.len());
    let mut expires = Vec::with_capacity(rows.len());
    let mut terms = Vec::with_capacity(rows.len());
    for r in rows {
        let m = &r.memory;
        terms.push(index_text(&user_key(&m.user_id), &m.content));
        ids.push(m.id);
        users.push(m.user_id.clone());
        agents.push(m.agent_id.clone());
        runs.push(m.run_id.clone());
        kinds.push(m.kind.clone());
        contents.push(m.content.clone());
        hashes.push(r.content_hash.clone());
        keys.push(r.dedupe.then(|| r.content_hash.clone()));
        tags.push(serde_json::to_string(&m.tags).map_err(corrupt)?);
        metas.push(serde_json::to_string(&m.metadata).map_err(corrupt)?);
        created.push(m.created_at);
        expires.push(m.expires_at);
    }
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO memories (id, user_id, agent_id, run_id, kind, content, content_hash, dedupe_key, tags, metadata, \
         created_at, updated_at, expires_at, terms) \
         SELECT u.id, u.user_id, u.agent_id, u.run_id, u.kind, u.content, u.content_hash, u.dedupe_key, \
         ARRAY(SELECT jsonb_array_elements_text(u.tags::jsonb)), u.metadata::jsonb, u.created_at, u.created_at, \
         u.expires_at, to_tsvector('simple'::regconfig, u.terms) \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], \
         $9::text[], $10::text[], $11::timestamptz[], $12::timestamptz[], $13::text[]) \
         AS u(id, user_id, agent_id, run_id, kind, content, content_hash, dedupe_key, tags, metadata, created_at, \
         expires_at, terms) \
         ON CONFLICT (user_id, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING RETURNING id",
    )
    .bind(ids)
    .bind(users)
    .bind(agents)
    .bind(runs)
    .bind(kinds)
    .bind(contents)
    .bind(hashes)
    .bind(keys)
    .bind(tags)
    .bind(metas)
    .bind(created)
    .bind(expires)
    .bind(terms)
    .fetch_all(&mut *tx)
    .await?;
    // The embeddings of the rows that went in.
    let fresh: std::collections::HashSet<Uuid> = inserted.iter().copied().collect();
    let (mut eids, mut vecs, mut models) = (Vec::new(), Vec::new(), Vec::new());
    for r in rows {
        if let Some(e) = &r.embedding
            && fresh.contains(&r.memory.id)
        {
            eids.push(r.memory.id);
            vecs.push(vector_to_bytes(&e.vector));
            models.push(e.model.clone());
        }
    }
    if !eids.is_empty() {
        sqlx::query(
            "INSERT INTO memory_embeddings (id, embedding, model) \
             SELECT * FROM UNNEST($1::uuid[], $2::bytea[], $3::text[])",
        )
        .bind(eids)
        .bind(vecs)
        .bind(models)
        .execute(&mut *tx)
        .await?;
    }
    Ok(inserted)
}

/// Writes what deduplicated writes changed of the stored memories `stored`
/// (`(as read, as merged)`; those equal are skipped): kind, tags, metadata,
/// expiry and `updated_at`, in one statement, and an `update` history entry each.
async fn update_attributes(
    tx: &mut sqlx::PgConnection,
    stored: &[(Memory, Memory)],
    at: OffsetDateTime,
) -> Result<()> {
    let changed: Vec<(&Memory, &Memory)> = stored
        .iter()
        .filter(|(old, new)| old != new)
        .map(|(old, new)| (old, new))
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    let (mut ids, mut users, mut kinds, mut tags, mut metas, mut expires, mut updated) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let (mut olds, mut news) = (Vec::new(), Vec::new());
    for (old, m) in &changed {
        ids.push(m.id);
        users.push(m.user_id.clone());
        kinds.push(m.kind.clone());
        tags.push(serde_json::to_string(&m.tags).map_err(corrupt)?);
        metas.push(serde_json::to_string(&m.metadata).map_err(corrupt)?);
        expires.push(m.expires_at);
        updated.push(m.updated_at);
        olds.push(history_json(old)?);
        news.push(history_json(m)?);
    }
    sqlx::query(
        "UPDATE memories m SET kind = u.kind, tags = ARRAY(SELECT jsonb_array_elements_text(u.tags::jsonb)), \
         metadata = u.metadata::jsonb, expires_at = u.expires_at, updated_at = u.updated_at \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::timestamptz[]) \
         AS u(id, user_id, kind, tags, metadata, expires_at, updated_at) \
         WHERE m.id = u.id AND m.user_id = u.user_id",
    )
    .bind(&ids)
    .bind(&users)
    .bind(kinds)
    .bind(tags)
    .bind(metas)
    .bind(expires)
    .bind(updated)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO memory_history (memory_id, user_id, op, old_value, new_value, at) \
         SELECT u.id, u.user_id, 'update', u.old::jsonb, u.new::jsonb, $5 \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS u(id, user_id, old, new, n) ORDER BY u.n",
    )
    .bind(&ids)
    .bind(&users)
    .bind(olds)
    .bind(news)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

impl Store for PgStore {
    async fn insert(&self, mut rows: Vec<NewRow>) -> Result<Vec<WriteOutcome>> {
        let mut tx = self.pool.begin().await?;
        // 1. Duplicates of live memories, then duplicates within the batch.
        let pairs: Vec<(String, String)> = rows
            .iter()
            .filter(|r| r.dedupe)
            .map(|r| (r.memory.user_id.clone(), r.content_hash.clone()))
            .collect();
        // Live by the application's clock, as every query of both stores.
        let existing = live_by_hash(&mut tx, &pairs, now()).await?;
        let Resolved { slots, mut stored } = resolve_duplicates(&mut rows, existing)?;
        // Stamped now, after the embedding and the lookup.
        let at = now();
        for r in &mut rows {
            r.memory.created_at = at;
            r.memory.updated_at = at;
        }
        let to_insert: Vec<usize> = slots
            .iter()
            .filter_map(|s| match s {
                Slot::New(i) => Some(*i),
                Slot::Stored(_) | Slot::Batch(_) => None,
            })
            .collect();
        // 2. One INSERT for the batch; a conflict means an expired memory holds
        // the dedupe key, or a concurrent writer inserted the same content:
        // then this row is a duplicate of that memory after all.
        let fresh: Vec<&NewRow> = to_insert.iter().map(|&i| &rows[i]).collect();
        let inserted: std::collections::HashSet<Uuid> =
            bulk_insert(&mut tx, &fresh).await?.into_iter().collect();
        let mut replaced: HashMap<usize, usize> = HashMap::new();
        for &i in &to_insert {
            let r = &rows[i];
            if inserted.contains(&r.memory.id) {
                continue;
            }
            sqlx::query(
                "UPDATE memories SET dedupe_key = NULL WHERE user_id = $1 AND dedupe_key = $2 \
                 AND expires_at IS NOT NULL AND expires_at <= $3",
            )
            .bind(&r.memory.user_id)
            .bind(&r.content_hash)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            let live = live_by_hash(
                &mut tx,
                &[(r.memory.user_id.clone(), r.content_hash.clone())],
                at,
            )
            .await?;
            if let Some(old) = live.into_values().next() {
                let mut merged = old.clone();
                merge_duplicate(&mut merged, &r.memory, i)?;
                replaced.insert(i, stored.len());
                stored.push((old, merged));
            } else if bulk_insert(&mut tx, &[r]).await?.is_empty() {
                return Err(MemoryError::Corrupt(
                    "dedupe key still taken after release".into(),
                ));
            }
        }
        // 3. Stored duplicates the batch changed: updated in place.
        for (old, new) in &mut stored {
            if old != new {
                new.updated_at = at;
            }
        }
        let changed: Vec<&Memory> = stored
            .iter()
            .filter(|(old, new)| old != new)
            .map(|(_, new)| new)
            .collect();
        update_attributes(&mut tx, &stored, at).await?;
        // 4. History and change log for what was written.
        let created: Vec<&Memory> = to_insert
            .iter()
            .filter(|i| !replaced.contains_key(i))
            .map(|&i| &rows[i].memory)
            .collect();
        if !created.is_empty() {
            let ids: Vec<Uuid> = created.iter().map(|m| m.id).collect();
            let users: Vec<String> = created.iter().map(|m| m.user_id.clone()).collect();
            let values = created
                .iter()
                .map(|m| history_json(m))
                .collect::<Result<Vec<_>>>()?;
            sqlx::query(
                "INSERT INTO memory_history (memory_id, user_id, op, new_value, at) \
                 SELECT u.id, u.user_id, 'create', u.v::jsonb, $4 FROM UNNEST($1::uuid[], $2::text[], $3::text[]) AS u(id, user_id, v)",
            )
            .bind(ids)
            .bind(users)
            .bind(values)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        let changes: Vec<_> = created
            .iter()
            .chain(&changed)
            .map(|m| (Some(m.id), m.user_id.clone(), ChangeOp::Upsert))
            .collect();
        let last_seq = record_changes(&mut tx, &changes, at).await?;
        tx.commit().await?;
        self.committed(last_seq);
        let stored_of = |i: usize| replaced.get(&i).map(|&j| stored[j].1.clone());
        Ok(slots
            .into_iter()
            .map(|s| match s {
                Slot::New(i) => match stored_of(i) {
                    Some(memory) => WriteOutcome {
                        memory,
                        deduplicated: true,
                        embedding_pending: false,
                    },
                    None => WriteOutcome {
                        memory: rows[i].memory.clone(),
                        deduplicated: false,
                        embedding_pending: false,
                    },
                },
                Slot::Batch(i) => WriteOutcome {
                    memory: stored_of(i).unwrap_or_else(|| rows[i].memory.clone()),
                    deduplicated: true,
                    embedding_pending: false,
                },
                Slot::Stored(j) => WriteOutcome {
                    memory: stored[j].1.clone(),
                    deduplicated: true,
                    embedding_pending: false,
                },
            })
            .collect())
    }

    async fn get(&self, user_id: &str, id: Uuid) -> Result<Option<Memory>> {
        let sql = format!(
            "SELECT {COLS} FROM memories m WHERE m.id = $1 AND m.user_id = $2 AND (m.expires_at IS NULL OR m.expires_at > $3)"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .bind(user_id)
            .bind(now())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode).transpose()
    }

    async fn update(&self, user_id: &str, id: Uuid, patch: Patch) -> Result<Option<Memory>> {
        let at = now();
        let mut tx = self.pool.begin().await?;
        let sql = format!(
            "SELECT {COLS} FROM memories m WHERE m.id = $1 AND m.user_id = $2 \
             AND (m.expires_at IS NULL OR m.expires_at > $3) FOR UPDATE"
        );
        let Some(row) = sqlx::query(&sql)
            .bind(id)
            .bind(user_id)
            .bind(at)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let old = decode(&row)?;
        let new = apply_patch(&old, &patch, at);
        let mut qb = QueryBuilder::<Postgres>::new("UPDATE memories SET updated_at = ");
        qb.push_bind(at);
        if let (Some(c), Some(h)) = (&patch.content, &patch.content_hash) {
            qb.push(", content = ").push_bind(c.clone());
            qb.push(", content_hash = ").push_bind(h.clone());
            qb.push(", dedupe_key = NULL");
            qb.push(", terms = to_tsvector('simple'::regconfig, ")
                .push_bind(index_text(&user_key(user_id), c))
                .push(")");
            sqlx::query("DELETE FROM memory_embeddings WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if patch.tags.is_some() {
            qb.push(", tags = ").push_bind(new.tags.clone());
        }
        if patch.metadata.is_some() {
            qb.push(", metadata = ")
                .push_bind(Json(new.metadata.clone()));
        }
        if patch.expires_at.is_some() {
            qb.push(", expires_at = ").push_bind(new.expires_at);
        }
        qb.push(" WHERE id = ").push_bind(id);
        qb.push(" AND user_id = ").push_bind(user_id.to_string());
        qb.build().execute(&mut *tx).await?;
        if patch.content.is_some()
            && let Some(e) = &patch.embedding
        {
            sqlx::query("INSERT INTO memory_embeddings (id, embedding, model) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(vector_to_bytes(&e.vector))
                .bind(&e.model)
                .execute(&mut *tx)
                .await?;
        }
        record_history(&mut tx, &new, "update", Some(&old), Some(&new), at).await?;
        let seq = record_changes(
            &mut tx,
            &[(Some(id), user_id.to_string(), ChangeOp::Upsert)],
            at,
        )
        .await?;
        tx.commit().await?;
        self.committed(seq);
        Ok(Some(new))
    }

    async fn delete(&self, user_id: &str, id: Uuid) -> Result<bool> {
        let at = now();
        let mut tx = self.pool.begin().await?;
        let sql = format!(
            "DELETE FROM memories m WHERE m.id = $1 AND m.user_id = $2 \
             AND (m.expires_at IS NULL OR m.expires_at > $3) RETURNING {COLS}"
        );
        let Some(row) = sqlx::query(&sql)
            .bind(id)
            .bind(user_id)
            .bind(at)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(false);
        };
        let old = decode(&row)?;
        record_history(&mut tx, &old, "delete", Some(&old), None, at).await?;
        let seq = record_changes(
            &mut tx,
            &[(Some(id), user_id.to_string(), ChangeOp::Delete)],
            at,
        )
        .await?;
        tx.commit().await?;
        self.committed(seq);
        Ok(true)
    }

    async fn delete_user(&self, user_id: &str) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query("DELETE FROM memories WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM memory_history WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        let seq = record_changes(
            &mut tx,
            &[(None, user_id.to_string(), ChangeOp::DeleteUser)],
            now(),
        )
        .await?;
        tx.commit().await?;
        self.committed(seq);
        Ok(n)
    }

    async fn list(&self, q: &ListQuery) -> Result<Page> {
        let mut qb = QueryBuilder::<Postgres>::new(format!("SELECT {COLS} FROM memories m WHERE"));
        push_filter(&mut qb, &q.filter, now());
        if let Some(c) = q.cursor {
            let t = from_micros(c.created_us)?;
            qb.push(" AND (m.created_at < ").push_bind(t);
            qb.push(" OR (m.created_at = ").push_bind(t);
            qb.push(" AND m.id < ").push_bind(c.id).push("))");
        }
        qb.push(" ORDER BY m.created_at DESC, m.id DESC LIMIT ")
            .push_bind(i64::try_from(q.limit + 1).unwrap_or(i64::MAX));
        let rows = qb.build().fetch_all(&self.pool).await?;
        let mut memories = rows.iter().map(decode).collect::<Result<Vec<_>>>()?;
        let next_cursor = if memories.len() > q.limit {
            memories.truncate(q.limit);
            memories.last().map(|m| Cursor::after(m).encode())
        } else {
            None
        };
        Ok(Page {
            memories,
            next_cursor,
        })
    }

    async fn keyword(
        &self,
        filter: &Filter,
        terms: &[String],
        limit: usize,
    ) -> Result<Vec<(Memory, f32)>> {
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let rows = keyword_query(COLS, filter, terms, limit, now())
            .build()
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let score: f64 = r.try_get("score")?;
                Ok((decode(r)?, score as f32))
            })
            .collect()
    }

    async fn keyword_ids(
        &self,
        filter: &Filter,
        terms: &[String],
        limit: usize,
    ) -> Result<Vec<(Uuid, f32)>> {
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let rows = keyword_query("m.id", filter, terms, limit, now())
            .build()
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let score: f64 = r.try_get("score")?;
                Ok((r.try_get("id")?, score as f32))
            })
            .collect()
    }

    async fn fetch(&self, filter: &Filter, ids: &[Uuid]) -> Result<Vec<Memory>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_IN_LIST) {
            let mut qb = QueryBuilder::<Postgres>::new(format!(
                "SELECT {COLS} FROM memories m WHERE m.id = ANY("
            ));
            qb.push_bind(chunk.to_vec()).push(") AND");
            push_filter(&mut qb, filter, now());
            for r in qb.build().fetch_all(&self.pool).await? {
                out.push(decode(&r)?);
            }
        }
        Ok(out)
    }

    async fn history(&self, user_id: &str, id: Uuid) -> Result<Option<Vec<HistoryEntry>>> {
        // Owned by the user when the user has history for it: a deleted or
        // expired memory keeps its history (with the delete or expire entry).
        let rows = sqlx::query(
            "SELECT op, old_value, new_value, at FROM memory_history WHERE memory_id = $1 AND user_id = $2 ORDER BY hid",
        )
        .bind(id)
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let old: Option<Json<serde_json::Value>> = r.try_get("old_value")?;
                let new: Option<Json<serde_json::Value>> = r.try_get("new_value")?;
                Ok(HistoryEntry {
                    operation: r.try_get("op")?,
                    old_value: old.map(|j| j.0),
                    new_value: new.map(|j| j.0),
                    at: r.try_get("at")?,
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(|h| (!h.is_empty()).then_some(h))
    }

    async fn changes_after(&self, seq: i64, limit: usize) -> Result<Vec<Change>> {
        let rows =
            sqlx::query("SELECT seq, memory_id, user_id, op FROM memory_changes WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(seq)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                let op: String = r.try_get("op")?;
                Ok(Change {
                    seq: r.try_get("seq")?,
                    op: ChangeOp::parse(&op)?,
                    memory_id: r.try_get("memory_id")?,
                    user_id: r.try_get("user_id")?,
                })
            })
            .collect()
    }

    async fn last_change(&self) -> Result<i64> {
        let v: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM memory_changes")
            .fetch_one(&self.pool)
            .await?;
        Ok(v.unwrap_or(0))
    }

    fn local_change(&self) -> i64 {
        self.local_seq.load(Ordering::Acquire)
    }

    async fn nearest_exact(
        &self,
        filter: &Filter,
        query: &Embedding,
        k: usize,
        scan: usize,
    ) -> Result<ExactHits> {
        // Pages of embeddings, newest first (keyset), each scored on the
        // blocking pool: at most one page of vectors is held at a time.
        let at = now();
        let mut nearest = Nearest::new(query, k);
        let mut after: Option<(OffsetDateTime, Uuid)> = None;
        let mut seen = 0usize;
        loop {
            let want = EXACT_PAGE.min(scan.saturating_add(1) - seen);
            let mut qb = QueryBuilder::<Postgres>::new(
                "SELECT m.id, m.created_at, e.model, e.embedding FROM memories m \
                 JOIN memory_embeddings e ON e.id = m.id WHERE e.model = ",
            );
            qb.push_bind(query.model.clone()).push(" AND");
            push_filter(&mut qb, filter, at);
            if let Some((t, id)) = after {
                qb.push(" AND (m.created_at < ").push_bind(t);
                qb.push(" OR (m.created_at = ").push_bind(t);
                qb.push(" AND m.id < ").push_bind(id).push("))");
            }
            qb.push(" ORDER BY m.created_at DESC, m.id DESC LIMIT ")
                .push_bind(i64::try_from(want).unwrap_or(i64::MAX));
            let rows = qb.build().fetch_all(&self.pool).await?;
            let n = rows.len();
            if let Some(last) = rows.last() {
                after = Some((last.try_get("created_at")?, last.try_get("id")?));
            }
            let page = rows
                .iter()
                .take(scan.saturating_sub(seen))
                .map(|r| {
                    Ok((
                        r.try_get("id")?,
                        r.try_get("model")?,
                        r.try_get("embedding")?,
                    ))
                })
                .collect::<Result<Vec<(Uuid, String, Vec<u8>)>>>()?;
            drop(rows);
            seen += n;
            nearest = tokio::task::spawn_blocking(move || {
                for (id, model, bytes) in &page {
                    nearest.offer(*id, model, bytes);
                }
                nearest
            })
            .await
            .map_err(|e| MemoryError::Index(format!("exact search task failed: {e}")))?;
            if n < want || seen > scan {
                break;
            }
        }
        Ok(ExactHits {
            hits: nearest.into_hits(),
            more: seen > scan,
        })
    }

    async fn index_entries(&self, ids: &[Uuid]) -> Result<Vec<IndexEntry>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_IN_LIST) {
            let rows = sqlx::query(&format!("{ENTRY_SELECT} WHERE m.id = ANY($1)"))
                .bind(chunk.to_vec())
                .fetch_all(&self.pool)
                .await?;
            for r in &rows {
                out.push(decode_entry(r)?);
            }
        }
        Ok(out)
    }

    async fn scan_index_entries(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<IndexEntry>> {
        let rows = sqlx::query(&format!(
            "{ENTRY_SELECT} WHERE m.id > $1 ORDER BY m.id LIMIT $2"
        ))
        .bind(after.unwrap_or(Uuid::nil()))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(decode_entry(r)?);
        }
        Ok(out)
    }

    async fn count(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM memories")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn unembedded(
        &self,
        model: &str,
        dimension: usize,
        after: Option<Uuid>,
        scan: usize,
    ) -> Result<UnembeddedPage> {
        let rows = sqlx::query(
            "SELECT m.id, m.content_hash, CASE WHEN (e.model IS DISTINCT FROM $1 \
             OR octet_length(e.embedding) <> $2) \
             AND (m.expires_at IS NULL OR m.expires_at > $5) THEN m.content END AS content \
             FROM memories m LEFT JOIN memory_embeddings e ON e.id = m.id \
             WHERE m.id > $3 ORDER BY m.id LIMIT $4",
        )
        .bind(model)
        .bind(i64::try_from(dimension * 4).unwrap_or(i64::MAX))
        .bind(after.unwrap_or(Uuid::nil()))
        .bind(i64::try_from(scan).unwrap_or(i64::MAX))
        .bind(now())
        .fetch_all(&self.pool)
        .await?;
        let mut page = UnembeddedPage::default();
        for r in &rows {
            let content: Option<String> = r.try_get("content")?;
            if let Some(content) = content {
                page.memories.push(Unembedded {
                    id: r.try_get("id")?,
                    content,
                    content_hash: r.try_get("content_hash")?,
                });
            }
        }
        if rows.len() >= scan
            && let Some(last) = rows.last()
        {
            page.next = Some(last.try_get("id")?);
        }
        Ok(page)
    }

    async fn store_embeddings(&self, rows: Vec<NewEmbedding>) -> Result<u64> {
        if rows.is_empty() {
            return Ok(0);
        }
        let at = now();
        let mut tx = self.pool.begin().await?;
        // Locks the memories (as a patch does), so nothing changes them or
        // their embeddings before this commits; one locked by another writer
        // is skipped rather than waited for (no lock-order deadlock with a
        // user's delete, no queue behind another replica's backfill).
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let locked = sqlx::query(
            "SELECT id, user_id, content_hash FROM memories WHERE id = ANY($1) \
             AND (expires_at IS NULL OR expires_at > $2) ORDER BY id FOR UPDATE SKIP LOCKED",
        )
        .bind(&ids)
        .bind(at)
        .fetch_all(&mut *tx)
        .await?;
        let mut live: HashMap<Uuid, (String, String)> = HashMap::with_capacity(locked.len());
        for r in &locked {
            live.insert(
                r.try_get("id")?,
                (r.try_get("user_id")?, r.try_get("content_hash")?),
            );
        }
        // A new statement: sees an embedding committed by a writer that held
        // the lock before this transaction took it.
        let mut stored: HashMap<Uuid, (String, i32)> = HashMap::new();
        for r in sqlx::query(
            "SELECT id, model, octet_length(embedding) AS bytes FROM memory_embeddings WHERE id = ANY($1)",
        )
        .bind(live.keys().copied().collect::<Vec<Uuid>>())
        .fetch_all(&mut *tx)
        .await?
        {
            stored.insert(r.try_get("id")?, (r.try_get("model")?, r.try_get("bytes")?));
        }
        let (mut eids, mut vecs, mut models, mut changes) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in rows {
            let Some((user, hash)) = live.remove(&r.id) else {
                continue; // deleted, expired or locked
            };
            let bytes = r.embedding.vector.len() * 4;
            let has_it = stored.get(&r.id).is_some_and(|(m, b)| {
                *m == r.embedding.model && usize::try_from(*b).is_ok_and(|b| b == bytes)
            });
            if hash != r.content_hash || has_it {
                continue;
            }
            eids.push(r.id);
            vecs.push(vector_to_bytes(&r.embedding.vector));
            models.push(r.embedding.model);
            changes.push((Some(r.id), user, ChangeOp::Upsert));
        }
        if eids.is_empty() {
            return Ok(0);
        }
        sqlx::query(
            "INSERT INTO memory_embeddings (id, embedding, model) \
             SELECT * FROM UNNEST($1::uuid[], $2::bytea[], $3::text[]) \
             ON CONFLICT (id) DO UPDATE SET embedding = EXCLUDED.embedding, model = EXCLUDED.model",
        )
        .bind(eids)
        .bind(vecs)
        .bind(models)
        .execute(&mut *tx)
        .await?;
        let seq = record_changes(&mut tx, &changes, at).await?;
        tx.commit().await?;
        self.committed(seq);
        Ok(changes.len() as u64)
    }

    async fn purge_expired(&self, limit: usize) -> Result<u64> {
        let at = now();
        let mut tx = self.pool.begin().await?;
        // SKIP LOCKED: replicas purging at once take different rows.
        let sql = format!(
            "DELETE FROM memories m WHERE m.id IN (SELECT id FROM memories \
             WHERE expires_at <= $2 ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
             RETURNING {COLS}"
        );
        let rows = sqlx::query(&sql)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(at)
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let gone = rows.iter().map(decode).collect::<Result<Vec<Memory>>>()?;
        let ids: Vec<Uuid> = gone.iter().map(|m| m.id).collect();
        let users: Vec<String> = gone.iter().map(|m| m.user_id.clone()).collect();
        let old = gone
            .iter()
            .map(history_json)
            .collect::<Result<Vec<String>>>()?;
        sqlx::query(
            "INSERT INTO memory_history (memory_id, user_id, op, old_value, new_value, at) \
             SELECT u.id, u.user_id, 'expire', u.old::jsonb, NULL, $4 \
             FROM UNNEST($1::uuid[], $2::text[], $3::text[]) WITH ORDINALITY AS u(id, user_id, old, n) ORDER BY u.n",
        )
        .bind(&ids)
        .bind(&users)
        .bind(&old)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        let changes: Vec<(Option<Uuid>, String, ChangeOp)> = ids
            .iter()
            .zip(users)
            .map(|(id, u)| (Some(*id), u, ChangeOp::Delete))
            .collect();
        let seq = record_changes(&mut tx, &changes, at).await?;
        tx.commit().await?;
        self.committed(seq);
        Ok(gone.len() as u64)
    }

    async fn prune_changes(
        &self,
        before: OffsetDateTime,
        through: i64,
        limit: usize,
    ) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let newest: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM memory_changes")
            .fetch_one(&mut *tx)
            .await?;
        // Most rounds find nothing old enough: the oldest record says so
        // without reading a page of them.
        let oldest: Option<(i64, OffsetDateTime)> =
            sqlx::query_as("SELECT seq, at FROM memory_changes ORDER BY seq LIMIT 1")
                .fetch_optional(&mut *tx)
                .await?;
        if oldest.is_none_or(|o| super::prune_cut(&[o], &before, through, newest).is_none()) {
            return Ok(0);
        }
        let rows: Vec<(i64, OffsetDateTime)> =
            sqlx::query_as("SELECT seq, at FROM memory_changes ORDER BY seq LIMIT $1")
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&mut *tx)
                .await?;
        let Some(cut) = super::prune_cut(&rows, &before, through, newest) else {
            return Ok(0);
        };
        let n = sqlx::query("DELETE FROM memory_changes WHERE seq <= $1")
            .bind(cut)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(
            "UPDATE memory_change_horizon SET pruned_through = GREATEST(pruned_through, $1) WHERE id = 1",
        )
        .bind(cut)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn change_horizon(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT pruned_through FROM memory_change_horizon WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_rows::{
        assert_cjk_split, assert_refolded, content_patch, embedded, keyword_ids, row,
        unfolded_terms, unsplit_cjk_terms,
    };
    use super::*;

    /// The test database: `UAT_TEST_POSTGRES_URL`, else a local one.
    fn test_url() -> String {
        std::env::var("UAT_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    }

    /// Connection options for the test database, an admin pool on it, and a
    /// fresh schema `{prefix}_...` (`None`, loudly, when PostgreSQL is
    /// unreachable outside CI).
    async fn scratch_schema(prefix: &str) -> Option<(PgConnectOptions, PgPool, String)> {
        let url = test_url();
        let base = PgConnectOptions::from_str(&url).expect("url");
        let admin = match PgPoolOptions::new()
            .max_connections(1)
            .connect_with(base.clone())
            .await
        {
            Ok(p) => p,
            Err(e) if std::env::var("CI").is_err() => {
                eprintln!(
                    "SKIPPED: PostgreSQL at {url} is unreachable ({e}); set CI=true to make this a failure"
                );
                return None;
            }
            Err(e) => panic!("PostgreSQL at {url} is unreachable in CI: {e}"),
        };
        let schema = format!("{prefix}_{}", Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .expect("schema");
        Some((base, admin, schema))
    }

    /// Closes `store`'s pool and drops its scratch schema.
    async fn close_and_drop_schema(store: &PgStore, admin: &PgPool, schema: &str) {
        store.pool().close().await;
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(admin)
            .await
            .expect("drop schema");
    }

    /// A write looks for its duplicates by user and content hash through the
    /// index on both, not through every user's copies of a common hash.
    #[tokio::test]
    async fn the_duplicate_lookup_reads_the_index_on_user_and_hash() {
        let Some((base, admin, schema)) = scratch_schema("memplan").await else {
            return;
        };
        let store = PgStore::connect(base.options([("search_path", schema.as_str())]), 2)
            .await
            .expect("store");
        let mut rows: Vec<NewRow> = (0..400)
            .map(|u| row(&format!("u{u}"), "a common fact", "common", None))
            .collect();
        rows.extend((0..1600).map(|i| {
            row(
                &format!("u{}", i % 400),
                &format!("fact {i}"),
                &format!("h{i}"),
                None,
            )
        }));
        store.insert(rows).await.expect("insert");
        sqlx::query("ANALYZE memories")
            .execute(store.pool())
            .await
            .expect("analyze");
        let mut conn = store.pool().acquire().await.expect("connection");
        sqlx::query("SET enable_seqscan = off")
            .execute(&mut *conn)
            .await
            .expect("set");
        let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {}", live_by_hash_sql()))
            .bind(vec!["u7".to_string(), "u8".to_string()])
            .bind(vec!["common".to_string(), "h8".to_string()])
            .bind(now())
            .fetch_all(&mut *conn)
            .await
            .expect("plan");
        let plan = plan.join("\n");
        assert!(plan.contains("memories_user_hash_idx"), "{plan}");
        drop(conn);
        close_and_drop_schema(&store, &admin, &schema).await;
    }

    /// Whether a memory has expired is judged by the application's clock on
    /// every path (as list and search always did, and as SQLite does), never
    /// by the database's: here the database's runs an hour ahead, and a
    /// memory expiring in half an hour is live everywhere. History and the
    /// change log are stamped by the application's clock too.
    #[tokio::test]
    async fn expiry_is_judged_by_the_applications_clock_everywhere() {
        let Some((base, admin, schema)) = scratch_schema("memclock").await else {
            return;
        };
        // The schema's `now()` comes before `pg_catalog`'s on this path.
        sqlx::query(&format!(
            "CREATE FUNCTION {schema}.now() RETURNS timestamptz LANGUAGE sql STABLE \
             AS $$ SELECT pg_catalog.now() + interval '1 hour' $$"
        ))
        .execute(&admin)
        .await
        .expect("a clock an hour ahead");
        let path = format!("{schema},pg_catalog");
        let store = PgStore::connect(base.options([("search_path", path.as_str())]), 2)
            .await
            .expect("store");
        let db_now: OffsetDateTime = sqlx::query_scalar("SELECT now()")
            .fetch_one(store.pool())
            .await
            .expect("the database's time");
        assert!(db_now > now() + time::Duration::minutes(50), "{db_now}");

        let mut soon = row("alice", "a zebra for half an hour", "soon", None);
        soon.memory.expires_at = Some(now() + time::Duration::minutes(30));
        let id = soon.memory.id;
        store.insert(vec![soon.clone()]).await.expect("insert");
        assert!(store.get("alice", id).await.expect("get").is_some(), "get");
        let filter = Filter {
            user_id: "alice".into(),
            ..Filter::default()
        };
        let page = store
            .list(&ListQuery {
                filter: filter.clone(),
                limit: 10,
                cursor: None,
            })
            .await
            .expect("list");
        assert_eq!(page.memories.len(), 1, "list");
        assert_eq!(keyword_ids(&store, "alice", &["zebra"]).await, vec![id]);
        assert_eq!(store.fetch(&filter, &[id]).await.expect("fetch").len(), 1);
        let mut again = soon.clone();
        again.memory.id = Uuid::now_v7();
        let out = store.insert(vec![again]).await.expect("a duplicate");
        assert!(out[0].deduplicated, "dedupe finds it live");
        assert_eq!(out[0].memory.id, id);
        let todo = store
            .unembedded("m", 2, None, 10)
            .await
            .expect("unembedded");
        assert_eq!(todo.memories.len(), 1, "the backfill finds it live");
        let stored = store
            .store_embeddings(vec![NewEmbedding {
                id,
                content_hash: "soon".into(),
                embedding: Embedding {
                    model: "m".into(),
                    vector: vec![1.0, 0.0],
                },
            }])
            .await
            .expect("store embeddings");
        assert_eq!(stored, 1, "the backfill stores its embedding");
        assert_eq!(store.purge_expired(10).await.expect("purge"), 0);
        let patched = store
            .update("alice", id, content_patch("a zebra, patched"))
            .await
            .expect("update");
        assert!(patched.is_some(), "update");
        let history = store
            .history("alice", id)
            .await
            .expect("history")
            .expect("some history");
        let changes: Vec<OffsetDateTime> = sqlx::query_scalar("SELECT at FROM memory_changes")
            .fetch_all(store.pool())
            .await
            .expect("changes");
        for at in history.iter().map(|e| e.at).chain(changes) {
            assert!(
                (at - now()).abs() < time::Duration::minutes(10),
                "stamped by the application's clock: {at}"
            );
        }
        assert!(store.delete("alice", id).await.expect("delete"), "delete");
        close_and_drop_schema(&store, &admin, &schema).await;
    }

    /// A scratch schema migrated up to just before `migration`: its admin
    /// connection and name (for `close_and_drop_schema`), its options, and
    /// a pool on it to set up old rows with.
    async fn schema_before(
        name: &str,
        migration: i64,
    ) -> Option<(PgPool, String, PgConnectOptions, PgPool)> {
        let (base, admin, schema) = scratch_schema(name).await?;
        let opts = base.options([("search_path", schema.as_str())]);
        let old = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await
            .expect("pool");
        migrate_through(&old, migration - 1)
            .await
            .expect("the schema before the migration");
        Some((admin, schema, opts, old))
    }

    /// Stores alice's memories with the terms an older version indexed
    /// them with (`rows`: content and terms), as a migration test's start.
    async fn insert_old_terms(pool: &PgPool, rows: &[(&str, String)]) -> Vec<Uuid> {
        let mut ids = Vec::new();
        for (content, terms) in rows {
            let id = Uuid::now_v7();
            ids.push(id);
            sqlx::query(
                "INSERT INTO memories (id, user_id, content, content_hash, created_at, updated_at, terms) \
                 VALUES ($1, 'alice', $2, $3, now(), now(), to_tsvector('simple'::regconfig, $4))",
            )
            .bind(id)
            .bind(content)
            .bind(id.to_string())
            .bind(terms)
            .execute(pool)
            .await
            .expect("a memory with its old terms");
        }
        ids
    }

    /// A database whose keyword terms were made before accents were folded
    /// (`keyword::fold`) is indexed again when it migrates: its memories are
    /// found without their accents, and plain ASCII ones as before.
    #[tokio::test]
    async fn terms_made_before_folding_are_indexed_again() {
        let Some((admin, schema, opts, old)) = schema_before("memfold", FOLD_MIGRATION).await
        else {
            return;
        };
        let ids = insert_old_terms(&old, &unfolded_terms()).await;
        old.close().await;

        let store = PgStore::connect(opts, 2).await.expect("migrated");
        assert_refolded(&store, &ids).await;
        close_and_drop_schema(&store, &admin, &schema).await;
    }

    /// A database whose keyword terms were made before runs of CJK
    /// characters made bigrams is indexed again when it migrates, the
    /// memories whose folded content holds CJK characters only (picked in
    /// Rust, a page of memories at a time in id order: 600 memories without
    /// any come first, so the first page holds none of them): they are
    /// found by a word inside a sentence and by one character. Another
    /// start-up changes nothing, and running the migration again neither.
    #[tokio::test]
    async fn terms_made_before_cjk_bigrams_are_indexed_again() {
        let Some((admin, schema, opts, old)) = schema_before("memcjk", CJK_MIGRATION).await else {
            return;
        };
        let ids = insert_old_terms(&old, &unsplit_cjk_terms()).await;
        // Memories of another user, before alice's in id order, whose terms
        // say `sentinel`: they hold no CJK character, so they keep it.
        sqlx::query(
            "INSERT INTO memories (id, user_id, content, content_hash, created_at, updated_at, terms) \
             SELECT ('00000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid, 'bob', \
             'note ' || i, 'h' || i, now(), now(), to_tsvector('simple'::regconfig, $1) \
             FROM generate_series(1, 600) AS i",
        )
        .bind(format!("{}sentinel", user_key("bob")))
        .execute(&old)
        .await
        .expect("memories without CJK characters");
        old.close().await;

        // Migrates; another start-up finds nothing to do; the migration,
        // forgotten, runs again over memories already indexed the new way.
        for pass in ["migrates", "starts again", "migrates again"] {
            let store = PgStore::connect(opts.clone(), 2).await.expect(pass);
            assert_cjk_split(&store, &ids).await;
            assert_eq!(
                keyword_ids(&store, "bob", &["sentinel"]).await.len(),
                10,
                "{pass}: the memories without CJK characters kept their terms"
            );
            let bob: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM memories WHERE user_id = 'bob' AND terms @@ to_tsquery('simple', $1)",
            )
            .bind(format!("{}sentinel", user_key("bob")))
            .fetch_one(store.pool())
            .await
            .expect("count");
            assert_eq!(bob, 600, "{pass}");
            if pass == "starts again" {
                sqlx::query("DELETE FROM memory_schema_migrations WHERE version = $1")
                    .bind(CJK_MIGRATION)
                    .execute(store.pool())
                    .await
                    .expect("forget the migration");
            }
            if pass == "migrates again" {
                close_and_drop_schema(&store, &admin, &schema).await;
            } else {
                store.pool().close().await;
            }
        }
    }

    /// A database whose encoding is not UTF-8 (LATIN1 here) migrates and
    /// works: migration 6 binds no character the database cannot hold (it
    /// matched contents against a regular expression of CJK characters,
    /// which such a database refused, so the store could not start).
    #[tokio::test]
    async fn a_latin1_database_migrates() {
        let Some((base, admin, schema)) = scratch_schema("memlatin").await else {
            return;
        };
        let db = schema.clone();
        sqlx::query(&format!(
            "CREATE DATABASE {db} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        ))
        .execute(&admin)
        .await
        .expect("a LATIN1 database");
        // Checked after the database is dropped, so a failure leaves none.
        let outcome = async {
            let store = PgStore::connect(base.clone().database(&db), 2).await?;
            let m = row("alice", "un café crème", "h1", None);
            let id = m.memory.id;
            store.insert(vec![m]).await?;
            let filter = Filter {
                user_id: "alice".into(),
                ..Filter::default()
            };
            let found = store.keyword(&filter, &["cafe".to_string()], 10).await?;
            store.pool().close().await;
            Ok::<_, MemoryError>((id, found))
        }
        .await;
        sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)"))
            .execute(&admin)
            .await
            .expect("drop the database");
        sqlx::query(&format!("DROP SCHEMA {schema}"))
            .execute(&admin)
            .await
            .expect("drop schema");
        let (id, found) = outcome.expect("migrated, and a memory written");
        assert_eq!(
            found.into_iter().map(|(m, _)| m.id).collect::<Vec<_>>(),
            vec![id]
        );
    }

    /// A database written by the first schema (a generated `tsvector` of the
    /// plain words) migrates to user-scoped terms: old memories are found by
    /// keyword search for their own user only, and new and patched ones too.
    #[tokio::test]
    async fn a_first_schema_database_migrates_with_its_terms() {
        let Some((base, admin, schema)) = scratch_schema("memmig").await else {
            return;
        };
        let v1 = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(base.options([("search_path", schema.as_str())]))
            .await
            .expect("pool");
        sqlx::query(
            "CREATE TABLE memory_schema_migrations (version BIGINT PRIMARY KEY, at TIMESTAMPTZ NOT NULL)",
        )
        .execute(&v1)
        .await
        .expect("migrations table");
        for s in MIGRATIONS[0].1 {
            sqlx::query(s).execute(&v1).await.expect("schema 1");
        }
        sqlx::query("INSERT INTO memory_schema_migrations VALUES (1, now())")
            .execute(&v1)
            .await
            .expect("version 1");
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let rows = [
            ("alice", "the parcel ZX48213 left the depot"),
            ("alice", "lunch with Bob on friday"),
            ("bob", "my parcel ZX48213 too"),
        ];
        for (id, (user, content)) in ids.iter().zip(rows) {
            sqlx::query(
                "INSERT INTO memories (id, user_id, content, content_hash, created_at, updated_at, \
                 embedding, embedding_model) VALUES ($1, $2, $3, $4, now(), now(), $5, $6)",
            )
            .bind(id)
            .bind(user)
            .bind(content)
            .bind(id.to_string())
            .bind((user == "bob").then(|| vector_to_bytes(&[2.0, 0.5])))
            .bind((user == "bob").then_some("m"))
            .execute(&v1)
            .await
            .expect("a first-schema row");
        }
        v1.close().await;

        let store = PgStore::open_in_schema(&test_url(), 2, &schema)
            .await
            .expect("migrated");
        assert_eq!(
            keyword_ids(&store, "alice", &["zx48213"]).await,
            vec![ids[0]]
        );
        let entries = store.index_entries(&ids).await.expect("entries");
        assert_eq!(entries.len(), 1, "bob's embedding moved with him");
        assert_eq!(entries[0].id, ids[2]);
        assert_eq!(entries[0].embedding.vector, vec![2.0, 0.5]);
        let patched = store
            .update("alice", ids[1], content_patch("dinner with Carol"))
            .await
            .expect("update");
        assert!(patched.is_some());
        assert_eq!(keyword_ids(&store, "alice", &["carol"]).await, vec![ids[1]]);
        assert!(keyword_ids(&store, "alice", &["lunch"]).await.is_empty());
        let new = row("alice", "another ZX48213 note", "new", Some(vec![3.0, 0.5]));
        let new_id = new.memory.id;
        store.insert(vec![new]).await.expect("insert");
        let mut found = keyword_ids(&store, "alice", &["zx48213"]).await;
        found.sort();
        assert_eq!(found, vec![ids[0], new_id]);
        assert_eq!(embedded(&store).await, 2);
        // Deleting the memory deletes its embedding.
        assert!(store.delete("alice", new_id).await.expect("delete"));
        assert_eq!(embedded(&store).await, 1);
        close_and_drop_schema(&store, &admin, &schema).await;
    }
}
