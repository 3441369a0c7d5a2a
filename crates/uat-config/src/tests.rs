use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load_str(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("uat.toml");
    std::fs::write(&p, text).unwrap();
    Config::load_with_env(Some(&p), &env(vars), &Overrides::default()).map(|(c, _)| c)
}

const SAMPLE: &str = r#"
[server]
listen = "127.0.0.1:3033"

[[providers]]
name = "local-ollama"
kind = "ollama"
base_url = "http://127.0.0.1:11434"
api_key_env = "OLLAMA_KEY"
models = []
weight = 1
priority = 0
timeout = "60s"

[[providers]]
name = "openai"
kind = "openai"
base_url = "https://api.openai.com/v1"

[[models]]
name = "fast-chat"
targets = ["local-ollama/llama3.2:3b", "openai/gpt-4o-mini"]

[routing]
strategy = "least-latency"
max_attempts = 3

[storage]
data_dir = "./data"
database_url = "sqlite://./data/uat.db"
"#;

#[test]
fn issue_sample_parses() {
    let c = load_str(SAMPLE, &[]).unwrap();
    assert_eq!(c.providers.len(), 2);
    assert_eq!(c.providers[0].kind, ProviderKind::Ollama);
    assert_eq!(c.providers[0].timeout, std::time::Duration::from_secs(60));
    assert_eq!(c.routing.strategy, RoutingStrategy::LeastLatency);
    assert_eq!(c.models[0].targets.len(), 2);
}

#[test]
fn defaults_without_file() {
    let c = Config::from_toml("").unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:3033");
    assert!(c.providers.is_empty());
    assert_eq!(c.storage.database_url(), "sqlite://./data/uat.db");
    assert_eq!(c.server.body_limit, 4 * 1024 * 1024);
}

#[test]
fn unknown_field_is_rejected_with_its_path() {
    let err = load_str("[server]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n", &[]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("server"), "{msg}");
    assert!(msg.contains("listne"), "{msg}");
}

#[test]
fn bad_value_is_rejected_with_its_path() {
    let text = SAMPLE.replace("timeout = \"60s\"", "timeout = \"sixty\"");
    let msg = load_str(&text, &[]).unwrap_err().to_string();
    assert!(msg.contains("providers[0].timeout"), "{msg}");
}

#[test]
fn bad_strategy_names_the_field() {
    let text = SAMPLE.replace("least-latency", "fastest");
    let msg = load_str(&text, &[]).unwrap_err().to_string();
    assert!(msg.contains("routing.strategy"), "{msg}");
}

#[test]
fn alias_to_unknown_provider_is_rejected() {
    let text = SAMPLE.replace("openai/gpt-4o-mini", "nobody/gpt-4o-mini");
    let msg = load_str(&text, &[]).unwrap_err().to_string();
    assert!(msg.contains("models[0].targets[1]"), "{msg}");
}

#[test]
fn env_overrides_file_and_flags_override_env() {
    let c = load_str(
        SAMPLE,
        &[
            ("UAT_SERVER__LISTEN", "0.0.0.0:4000"),
            ("UAT_ROUTING__MAX_ATTEMPTS", "5"),
            ("UAT_PROVIDERS__1__WEIGHT", "7"),
            ("UAT_CACHE__L2__URL", "redis://127.0.0.1:6379/"),
        ],
    )
    .unwrap();
    assert_eq!(c.server.listen, "0.0.0.0:4000");
    assert_eq!(c.routing.max_attempts, 5);
    assert_eq!(c.providers[1].weight, 7);
    assert_eq!(c.cache.l2.url.as_deref(), Some("redis://127.0.0.1:6379/"));

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.toml");
    std::fs::write(&p, SAMPLE).unwrap();
    let o = Overrides {
        listen: Some("127.0.0.1:5000".into()),
        ..Default::default()
    };
    let (c, _) = Config::load_with_env(
        Some(&p),
        &env(&[("UAT_SERVER__LISTEN", "0.0.0.0:4000")]),
        &o,
    )
    .unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:5000");
}

#[test]
fn bad_env_value_names_the_path() {
    let msg = load_str(SAMPLE, &[("UAT_ROUTING__MAX_ATTEMPTS", "many")])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("routing.max_attempts"), "{msg}");
}

#[test]
fn missing_explicit_file_is_an_error() {
    let r = Config::load_with_env(
        Some(Path::new("/nonexistent/uat.toml")),
        &[],
        &Overrides::default(),
    );
    assert!(matches!(r, Err(ConfigError::Read { .. })));
}

#[test]
fn secrets_are_masked() {
    let c = load_str(
        "[storage]\ndatabase_url = \"postgres://app:hunter2@db:5432/uat\"\n[cache.l2]\nurl = \"redis://:pw@r:6379/\"\n",
        &[],
    )
    .unwrap();
    let out = c.to_masked_toml();
    assert!(!out.contains("hunter2"), "{out}");
    assert!(!out.contains(":pw@"), "{out}");
    assert!(out.contains("app:****@db:5432"), "{out}");
    // The masked output is itself a valid config.
    Config::from_toml(&out).unwrap();

    // Regression: secrets in a query string were printed in clear.
    let c = load_str(
        "[storage]\ndatabase_url = \"postgres://db/uat?user=app&password=hunter2&sslmode=require\"\n\
         [[providers]]\nname = \"azure\"\nkind = \"openai\"\n\
         base_url = \"https://x/v1?api-key=SECRETKEY&api-version=2024-06-01\"\n\
         [[providers]]\nname = \"s3\"\nkind = \"openai\"\n\
         base_url = \"https://y/v1?X-Amz-Signature=SIGVALUE&Access_Token=TOKVALUE&Pass%77ord=ENCODED#top\"\n",
        &[],
    )
    .unwrap();
    let out = c.to_masked_toml();
    for secret in ["hunter2", "SECRETKEY", "SIGVALUE", "TOKVALUE", "ENCODED"] {
        assert!(!out.contains(secret), "{secret}: {out}");
    }
    assert!(
        out.contains("postgres://db/uat?user=app&password=****&sslmode=require"),
        "{out}"
    );
    assert!(
        out.contains("https://x/v1?api-key=****&api-version=2024-06-01"),
        "{out}"
    );
    assert!(out.contains("Pass%77ord=****#top"), "{out}");
    Config::from_toml(&out).unwrap();
    assert_eq!(
        mask_url("https://u:pw@h?token=t"),
        "https://u:****@h?token=****"
    );
    // A password holding `?`, `#`, `/` or `@` is masked whole (splitting
    // the query off first printed `pa?ss` and `pa#ss` passwords in full).
    for (url, secret) in [
        ("postgres://u:pa?ss@h/db", "pa?ss"),
        ("postgres://u:pa#ss@h/db", "pa#ss"),
        ("postgres://u:p#?/w@h/db?password=x", "p#?/w"),
        ("postgres://u:p@ss@h/db", "p@ss"),
    ] {
        let out = mask_url(url);
        assert!(out.starts_with("postgres://u:****@h/db"), "{url}: {out}");
        assert!(!out.contains(secret), "{url}: {out}");
        assert!(!out.contains("password=x"), "{url}: {out}");
    }
    // An `@` in a query is no user info.
    assert_eq!(
        mask_url("https://h/v1?email=a@b.c&key=k"),
        "https://h/v1?email=a@b.c&key=****"
    );
}

#[test]
fn invalid_listen_is_rejected() {
    let msg = load_str("[server]\nlisten = \"nowhere\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("server.listen"), "{msg}");
}

#[test]
fn shipped_example_config_is_valid() {
    let text = include_str!("../../../uat.example.toml");
    let c = Config::from_toml(text).unwrap();
    assert_eq!(c.providers.len(), 4);
    assert_eq!(c.providers[2].default_max_tokens, Some(16000));
    assert_eq!(
        c.cache.model_ttl["gpt-4o-mini"],
        std::time::Duration::from_secs(600)
    );
    assert_eq!(
        c.cache.l2.timeout,
        Some(std::time::Duration::from_millis(50))
    );
}

/// No setting can be long or large enough to panic the server later: every
/// duration is at most 10y (a `breaker_cooldown` past the clock's range
/// panicked each request that tripped a breaker, an `embeddings.max_wait`
/// the batch threads), and the counts that size a queue, a pool or a buffer
/// up front are bounded. Each error names its path; the bounds themselves
/// are accepted.
#[test]
fn durations_and_sizes_that_would_overflow_later_are_refused() {
    let mock = "[[providers]]\nname = \"m\"\nkind = \"mock\"\n";
    for (toml, path) in [
        (
            "[routing]\nbreaker_cooldown = \"300000000000y\"\n",
            "routing.breaker_cooldown",
        ),
        ("[routing]\nbackoff_max = \"11y\"\n", "routing.backoff_max"),
        (
            "[server]\nshutdown_grace = \"9223372036854775807s\"\n",
            "server.shutdown_grace",
        ),
        (
            "[embeddings]\nmax_wait = \"300000000000y\"\n",
            "embeddings.max_wait",
        ),
        ("[embeddings]\nmax_wait = \"2m\"\n", "embeddings.max_wait"),
        ("[embeddings]\nthreads = 100000\n", "embeddings"),
        ("[cache.l2]\ntimeout = \"20y\"\n", "cache.l2.timeout"),
        (
            "[memory]\nchange_retention = \"20y\"\n",
            "memory.change_retention",
        ),
        (
            "[cache]\nwrite_queue = 2305843009213693952\n",
            "cache.write_queue",
        ),
        (
            "[storage]\nmax_connections = 4294967295\n",
            "storage.max_connections",
        ),
        ("[vector]\nmax_batch = 0\n", "vector.max_batch"),
        ("[server]\nmax_connections = 0\n", "server.max_connections"),
        (
            "[server]\nheader_read_timeout = \"0s\"\n",
            "server.header_read_timeout",
        ),
        (
            "[server]\nbody_read_timeout = \"0s\"\n",
            "server.body_read_timeout",
        ),
        ("[server]\nwrite_timeout = \"0s\"\n", "server.write_timeout"),
    ] {
        let msg = load_str(toml, &[]).unwrap_err().to_string();
        assert!(msg.contains(path), "{toml}: {msg}");
    }
    for (extra, path) in [
        ("timeout = \"11y\"\n", "providers[0].timeout"),
        ("connect_timeout = \"0s\"\n", "providers[0].connect_timeout"),
        (
            "first_byte_timeout = \"0s\"\n",
            "providers[0].first_byte_timeout",
        ),
        (
            "mock = { chunks = 1152921504606846976 }\n",
            "providers[0].mock.chunks",
        ),
    ] {
        let msg = load_str(&format!("{mock}{extra}"), &[])
            .unwrap_err()
            .to_string();
        assert!(msg.contains(path), "{extra}: {msg}");
    }
    let msg = load_str("", &[("UAT_ROUTING__BREAKER_COOLDOWN", "300000000000y")])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("routing.breaker_cooldown"), "{msg}");
    let c = load_str(
        &format!(
            "[routing]\nbreaker_cooldown = \"10y\"\n[embeddings]\nmax_wait = \"1m\"\nthreads = 1024\n[cache]\nwrite_queue = 1048576\n[storage]\nmax_connections = 10000\n{mock}mock = {{ chunks = 100000 }}\n"
        ),
        &[],
    )
    .unwrap();
    assert_eq!(c.routing.breaker_cooldown, crate::duration::MAX_DURATION);
    assert_eq!(c.providers[0].mock.chunks, 100_000);
}

/// The vector store snapshots a collection by itself once its WAL reaches
/// `vector.snapshot_wal_bytes`: 64 MiB unless set, 0 turns it off, and a
/// non-zero value under 1 MiB (a near-continuous rewrite) is refused by path.
#[test]
fn vector_snapshot_wal_bytes_defaults_to_64_mib_and_is_bounded() {
    assert_eq!(
        load_str("", &[]).unwrap().vector.snapshot_wal_bytes,
        64 * 1024 * 1024
    );
    for (toml, want) in [
        ("[vector]\nsnapshot_wal_bytes = 0\n", 0),
        ("[vector]\nsnapshot_wal_bytes = 1048576\n", 1024 * 1024),
    ] {
        assert_eq!(load_str(toml, &[]).unwrap().vector.snapshot_wal_bytes, want);
    }
    let c = load_str("", &[("UAT_VECTOR__SNAPSHOT_WAL_BYTES", "0")]).unwrap();
    assert_eq!(c.vector.snapshot_wal_bytes, 0);
    for toml in [
        "[vector]\nsnapshot_wal_bytes = 1048575\n",
        "[vector]\nsnapshot_wal_bytes = -1\n",
    ] {
        let msg = load_str(toml, &[]).unwrap_err().to_string();
        assert!(msg.contains("vector.snapshot_wal_bytes"), "{toml}: {msg}");
    }
    let msg = load_str("", &[("UAT_VECTOR__SNAPSHOT_WAL_BYTES", "4096")])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("vector.snapshot_wal_bytes"), "{msg}");
}

/// Regression: a queue smaller than the largest request answered that request
/// 503 + Retry-After even when empty, and clients retried it in vain. The
/// queue must hold one request of the most inputs allowed; the error names
/// the path and the limit.
#[test]
fn embeddings_queue_capacity_holds_the_largest_request() {
    let max = EmbeddingsConfig::MAX_REQUEST_INPUTS;
    assert_eq!(max, 2048);
    for toml in [
        format!("[embeddings]\nqueue_capacity = {}\n", max - 1),
        "[embeddings]\nqueue_capacity = 100\n".to_string(),
    ] {
        let msg = load_str(&toml, &[]).unwrap_err().to_string();
        assert!(msg.contains("embeddings.queue_capacity"), "{toml}: {msg}");
        assert!(msg.contains("2048"), "{toml}: {msg}");
    }
    let msg = load_str("", &[("UAT_EMBEDDINGS__QUEUE_CAPACITY", "10")])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("embeddings.queue_capacity"), "{msg}");
    let c = load_str(&format!("[embeddings]\nqueue_capacity = {max}\n"), &[]).unwrap();
    assert_eq!(c.embeddings.queue_capacity, max);
}

const KEY_A_SHA: &str = "8766b9cb08e6040b704f1e3ee1e186efccf2635b1d2634d6525333007e6aeae1";

fn auth_err(text: &str, vars: &[(&str, &str)]) -> String {
    load_str(text, vars).unwrap_err().to_string()
}

#[test]
fn auth_keys_resolve_from_env_and_digest() {
    let text = format!(
        r#"
[[auth.keys]]
name = "team-a"
key_env = "UAT_KEY_TEAM_A"
requests_per_minute = 600
tokens_per_minute = 40000
collections = ["docs-*", "faq"]
models = ["gpt-4o*"]

[[auth.keys]]
name = "ops"
key_sha256 = "{KEY_A_SHA}"
owner = "platform"
admin = true
"#
    );
    let c = load_str(&text, &[("UAT_KEY_TEAM_A", "secret-b")]).unwrap();
    assert!(c.auth.enabled());
    let keys = c.auth.resolve(|_| Some("secret-b".into())).unwrap();
    assert_eq!(keys[0].digest, key_digest(b"secret-b"));
    assert_eq!(keys[0].owner, "team-a", "owner defaults to the name");
    assert_eq!(keys[0].requests_per_minute, Some(600));
    assert_eq!(keys[0].tokens_per_minute, Some(40_000));
    assert_eq!(keys[1].tokens_per_minute, None);
    assert_eq!(
        keys[0].collections.as_deref(),
        Some(&["docs-*".to_string(), "faq".to_string()][..])
    );
    assert_eq!(keys[1].collections, None);
    assert_eq!(
        keys[0].models.as_deref(),
        Some(&["gpt-4o*".to_string()][..])
    );
    assert_eq!(keys[1].owner, "platform");
    assert!(keys[1].admin && !keys[0].admin);
    assert_eq!(hex::encode(keys[1].digest), KEY_A_SHA);
    // Neither the secret nor the digest is printed.
    let masked = c.to_masked_toml();
    assert!(
        !masked.contains(KEY_A_SHA) && !masked.contains("secret-b"),
        "{masked}"
    );
    assert!(!format!("{keys:?}").contains("digest"));
}

#[test]
fn no_auth_keys_means_auth_off() {
    assert!(!Config::default().auth.enabled());
}

#[test]
fn auth_duplicate_key_name_is_rejected() {
    let e = auth_err(
        &format!(
            "[[auth.keys]]\nname = \"a\"\nkey_sha256 = \"{KEY_A_SHA}\"\n\
             [[auth.keys]]\nname = \"a\"\nkey_env = \"K\"\n"
        ),
        &[("K", "x")],
    );
    assert!(
        e.contains("auth.keys[1].name") && e.contains("duplicate"),
        "{e}"
    );
}

#[test]
fn auth_key_needs_exactly_one_secret() {
    let both = auth_err(
        &format!("[[auth.keys]]\nname = \"a\"\nkey_env = \"K\"\nkey_sha256 = \"{KEY_A_SHA}\"\n"),
        &[("K", "x")],
    );
    assert!(
        both.contains("auth.keys[0].key_env") && both.contains("not both"),
        "{both}"
    );
    let neither = auth_err("[[auth.keys]]\nname = \"a\"\n", &[]);
    assert!(
        neither.contains("auth.keys[0].key_env") && neither.contains("required"),
        "{neither}"
    );
    let bad_hex = auth_err("[[auth.keys]]\nname = \"a\"\nkey_sha256 = \"abc\"\n", &[]);
    assert!(bad_hex.contains("auth.keys[0].key_sha256"), "{bad_hex}");
}

#[test]
fn auth_missing_or_empty_key_env_names_the_variable() {
    let text = "[[auth.keys]]\nname = \"a\"\nkey_sha256 = \"".to_string()
        + KEY_A_SHA
        + "\"\n[[auth.keys]]\nname = \"b\"\nkey_env = \"UAT_KEY_B\"\n";
    let e = auth_err(&text, &[]);
    assert!(
        e.contains("auth.keys[1].key_env") && e.contains("UAT_KEY_B") && e.contains("not set"),
        "{e}"
    );
    let e = auth_err(&text, &[("UAT_KEY_B", "")]);
    assert!(e.contains("UAT_KEY_B") && e.contains("empty"), "{e}");
    // Two keys with one secret could not be told apart.
    let e = auth_err(
        &format!(
            "[[auth.keys]]\nname = \"a\"\nkey_sha256 = \"{KEY_A_SHA}\"\n\
             [[auth.keys]]\nname = \"b\"\nkey_env = \"K\"\n"
        ),
        &[("K", "secret-a")],
    );
    assert!(
        e.contains("auth.keys[1].key_env") && e.contains("same secret"),
        "{e}"
    );
}

#[test]
fn auth_zero_rpm_is_rejected() {
    let e = auth_err(
        &format!(
            "[[auth.keys]]\nname = \"a\"\nkey_sha256 = \"{KEY_A_SHA}\"\nrequests_per_minute = 0\n"
        ),
        &[],
    );
    assert!(e.contains("auth.keys[0].requests_per_minute"), "{e}");
    let e = auth_err(
        &format!(
            "[[auth.keys]]\nname = \"a\"\nkey_sha256 = \"{KEY_A_SHA}\"\ntokens_per_minute = 0\n"
        ),
        &[],
    );
    assert!(e.contains("auth.keys[0].tokens_per_minute"), "{e}");
    let e = auth_err(
        &format!(
            "[[auth.keys]]\nname = \"a\"\nkey_sha256 = \"{KEY_A_SHA}\"\ncollections = [\"ok\", \" \"]\n"
        ),
        &[],
    );
    assert!(e.contains("auth.keys[0].collections[1]"), "{e}");
    let e = auth_err(
        &format!("[[auth.keys]]\nname = \"a\"\nkey_sha256 = \"{KEY_A_SHA}\"\nmodels = [\"\"]\n"),
        &[],
    );
    assert!(e.contains("auth.keys[0].models[0]"), "{e}");
    let e = auth_err(
        &format!(
            "[[auth.keys]]\nname = \"a\"\nkey_sha256 = \"{KEY_A_SHA}\"\nadmin = true\ncollections = [\"x\"]\n"
        ),
        &[],
    );
    assert!(e.contains("auth.keys[0].collections"), "{e}");
}

#[test]
fn auth_rpm_env_override_applies() {
    let c = load_str(
        &format!("[[auth.keys]]\nname = \"a\"\nkey_sha256 = \"{KEY_A_SHA}\"\n"),
        &[("UAT_AUTH__KEYS__0__REQUESTS_PER_MINUTE", "30")],
    )
    .unwrap();
    assert_eq!(c.auth.keys[0].requests_per_minute, Some(30));
}

#[test]
fn auth_owner_default_is_refused_and_secrets_are_trimmed() {
    // `default` is the namespace of requests made without keys.
    let e = auth_err(
        &format!("[[auth.keys]]\nname = \"default\"\nkey_sha256 = \"{KEY_A_SHA}\"\n"),
        &[],
    );
    assert!(
        e.contains("auth.keys[0].name") && e.contains("default"),
        "{e}"
    );
    let e = auth_err(
        &format!(
            "[[auth.keys]]\nname = \"a\"\nowner = \"default\"\nkey_sha256 = \"{KEY_A_SHA}\"\n"
        ),
        &[],
    );
    assert!(e.contains("auth.keys[0].owner"), "{e}");
    // A secret mounted from a file ends in a newline; the key sent is trimmed too.
    let text = "[[auth.keys]]\nname = \"a\"\nkey_env = \"K\"\n";
    let c = load_str(text, &[("K", "secret-b\n")]).unwrap();
    let keys = c.auth.resolve(|_| Some("secret-b\n".into())).unwrap();
    assert_eq!(keys[0].digest, key_digest(b"secret-b"));
    let e = auth_err(text, &[("K", " \n")]);
    assert!(e.contains("empty"), "{e}");
}

#[test]
fn auth_keyless_owner_marks_its_keys_and_must_own_one() {
    let keys = |extra: &str| {
        format!(
            "[auth]\n{extra}\n[[auth.keys]]\nname = \"a\"\nowner = \"app\"\nkey_sha256 = \"{KEY_A_SHA}\"\n\
             [[auth.keys]]\nname = \"b\"\nkey_env = \"K\"\n"
        )
    };
    let c = load_str(&keys("keyless_owner = \"app\""), &[("K", "k")]).unwrap();
    let resolved = c.auth.resolve(|_| Some("k".into())).unwrap();
    assert!(resolved[0].keyless, "the owner's key");
    assert!(!resolved[1].keyless, "another owner's key");
    // By the owner, which defaults to the name.
    let c = load_str(&keys("keyless_owner = \"b\""), &[("K", "k")]).unwrap();
    let resolved = c.auth.resolve(|_| Some("k".into())).unwrap();
    assert!(!resolved[0].keyless && resolved[1].keyless);
    // A name that owns no key is a typo, not a silent no-op.
    let e = auth_err(&keys("keyless_owner = \"ap\""), &[("K", "k")]);
    assert!(
        e.contains("auth.keyless_owner") && e.contains("`ap`"),
        "{e}"
    );
}

#[test]
fn auth_protect_metrics_needs_an_admin_key() {
    let text = |admin: bool| {
        format!(
            "[auth]\nprotect_metrics = true\n[[auth.keys]]\nname = \"a\"\nkey_sha256 = \"{KEY_A_SHA}\"\nadmin = {admin}\n"
        )
    };
    let e = auth_err(&text(false), &[]);
    assert!(
        e.contains("auth.protect_metrics") && e.contains("admin"),
        "{e}"
    );
    assert!(load_str(&text(true), &[]).unwrap().auth.protect_metrics);
    assert!(!Config::default().auth.protect_metrics);
}

#[test]
fn ollama_streams_get_longer_to_start_unless_set() {
    let c = load_str(
        "[[providers]]\nname = \"o\"\nkind = \"ollama\"\nbase_url = \"http://127.0.0.1:11434\"\n\
         [[providers]]\nname = \"o2\"\nkind = \"ollama\"\nbase_url = \"http://127.0.0.1:11435\"\nfirst_byte_timeout = \"10s\"\n\
         [[providers]]\nname = \"v\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:8000/v1\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        c.providers[0].first_byte_timeout,
        crate::OLLAMA_FIRST_BYTE_TIMEOUT
    );
    assert_eq!(
        c.providers[0].first_byte_timeout,
        std::time::Duration::from_secs(120)
    );
    assert_eq!(
        c.providers[1].first_byte_timeout,
        std::time::Duration::from_secs(10)
    );
    assert_eq!(
        c.providers[2].first_byte_timeout,
        std::time::Duration::from_secs(30)
    );
    // An environment override wins over the kind's default.
    let c = load_str(
        "[[providers]]\nname = \"o\"\nkind = \"ollama\"\nbase_url = \"http://127.0.0.1:11434\"\n",
        &[("UAT_PROVIDERS__0__FIRST_BYTE_TIMEOUT", "45s")],
    )
    .unwrap();
    assert_eq!(
        c.providers[0].first_byte_timeout,
        std::time::Duration::from_secs(45)
    );
    // Providers found by probing (no [[providers]]) are built with the same default.
    let p = crate::ProviderConfig::new("ollama", crate::ProviderKind::Ollama, None);
    assert_eq!(p.first_byte_timeout, std::time::Duration::from_secs(120));
}

/// A URL `serve` would refuse at start-up (the router parses each provider's
/// `base_url`, the Redis client `cache.l2.url`) is refused by the config
/// itself, so `uat config check` catches it; a Redis password is not echoed.
#[test]
fn urls_that_do_not_parse_are_refused_naming_the_field() {
    for bad in ["http://", "http://exa mple.com/v1", "https://[::1/v1"] {
        let text =
            format!("[[providers]]\nname = \"p\"\nkind = \"openai\"\nbase_url = \"{bad}\"\n");
        let msg = Config::from_toml(&text).unwrap_err().to_string();
        assert!(msg.contains("providers[0].base_url"), "{bad}: {msg}");
    }
    let ok =
        "[[providers]]\nname = \"p\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:8000/v1\"\n";
    assert!(Config::from_toml(ok).is_ok());
    let msg = Config::from_toml("[cache.l2]\nurl = \"redis://:s3cret@exa mple:6379/\"\n")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("cache.l2.url"), "{msg}");
    assert!(!msg.contains("s3cret"), "the password is not echoed: {msg}");
    assert!(Config::from_toml("[cache.l2]\nurl = \"redis://127.0.0.1:6379/\"\n").is_ok());
}

#[test]
fn pricing_is_read_by_model_name_and_validated() {
    let c = load_str(
        r#"
[pricing."gpt-4o"]
input_per_million = 2.50
output_per_million = 10.00
cached_input_per_million = 1.25

[pricing."anthropic/claude-sonnet-4-5"]
input_per_million = 3.0
output_per_million = 15.0
cached_input_per_million = 0.3
cache_write_per_million = 3.75
cache_write_1h_per_million = 6.0

[pricing."openai/gpt-4o-mini"]
input_per_million = 0.15
output_per_million = 0.6

[pricing.embed-small]
input_per_million = 0.02
"#,
        &[],
    )
    .unwrap();
    assert_eq!(c.pricing.len(), 4);
    let p = c.pricing["gpt-4o"];
    assert_eq!(
        (
            p.input_per_million,
            p.output_per_million,
            p.cached_input_per_million
        ),
        (2.5, 10.0, Some(1.25))
    );
    assert_eq!(c.pricing["embed-small"].output_per_million, 0.0);
    let claude = c.pricing["anthropic/claude-sonnet-4-5"];
    assert_eq!(
        (
            claude.cache_write_per_million,
            claude.cache_write_1h_per_million
        ),
        (Some(3.75), Some(6.0))
    );
    assert_eq!(
        (p.cache_write_per_million, p.cache_write_1h_per_million),
        (None, None),
        "unset: the pricing's defaults"
    );
    assert!(c.pricing.contains_key("openai/gpt-4o-mini"));
    // Shown by `config check`, and read back the same.
    let again = Config::from_toml(&c.to_masked_toml()).unwrap();
    assert_eq!(again.pricing, c.pricing);
    for (bad, field) in [
        ("input_per_million = -1.0", "input_per_million"),
        (
            "input_per_million = 1.0\noutput_per_million = nan",
            "output_per_million",
        ),
        (
            "input_per_million = 1.0\ncached_input_per_million = inf",
            "cached_input_per_million",
        ),
        (
            "input_per_million = 1.0\ncache_write_per_million = -3.75",
            "cache_write_per_million",
        ),
        (
            "input_per_million = 1.0\ncache_write_1h_per_million = nan",
            "cache_write_1h_per_million",
        ),
    ] {
        let e = load_str(&format!("[pricing.\"gpt-4o\"]\n{bad}\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("pricing.\"gpt-4o\".{field}")), "{e}");
    }
    let e = load_str("[pricing.m]\ninput_per_million = 1\nouput = 2\n", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("ouput"), "{e}");
}

#[test]
fn key_budgets_are_validated() {
    let key = |extra: &str| {
        format!("[[auth.keys]]\nname = \"a\"\nkey_sha256 = \"{KEY_A_SHA}\"\n{extra}\n")
    };
    let c = load_str(&key("max_budget = 25.0\nbudget_period = \"30d\""), &[]).unwrap();
    let k = &c.auth.keys[0];
    assert_eq!(k.max_budget, Some(25.0));
    assert_eq!(
        k.budget_period,
        Some(std::time::Duration::from_secs(30 * 86_400))
    );
    assert!(c.auth.has_budgets());
    let r = c.auth.resolve(|_| None).unwrap();
    assert_eq!(r[0].max_budget, Some(25.0));
    assert_eq!(
        r[0].budget_period,
        Some(std::time::Duration::from_secs(30 * 86_400))
    );
    let again = Config::from_toml(&c.to_masked_toml().replace("****", KEY_A_SHA)).unwrap();
    assert_eq!(again.auth.keys[0].budget_period, k.budget_period);
    for (extra, field) in [
        ("max_budget = 0.0", "auth.keys[0].max_budget"),
        ("max_budget = -3.0", "auth.keys[0].max_budget"),
        ("max_budget = nan", "auth.keys[0].max_budget"),
        (
            "max_budget = 1.0\nbudget_period = \"30s\"",
            "auth.keys[0].budget_period",
        ),
        ("budget_period = \"soon\"", "budget_period"),
    ] {
        let e = auth_err(&key(extra), &[]);
        assert!(e.contains(field), "{extra}: {e}");
    }
    assert!(!Config::default().auth.has_budgets());
}
