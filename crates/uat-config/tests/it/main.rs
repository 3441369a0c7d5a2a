//! Integration tests of `uat-config`: loading through the public API, as the
//! binary does (file + environment + validation).
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::time::Duration;
use uat_config::{Config, ConfigError, Overrides};

fn load_str(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("uat.toml");
    std::fs::write(&p, text).unwrap();
    let env: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::load_with_env(Some(&p), &env, &Overrides::default()).map(|(c, _)| c)
}

fn load_err(text: &str, vars: &[(&str, &str)]) -> String {
    match load_str(text, vars) {
        Ok(_) => "accepted".into(),
        Err(e) => e.to_string(),
    }
}

/// Regression: with no `[[providers]]` in the file, `UAT_PROVIDERS__0__NAME`
/// failed with "invalid type: map, expected a sequence in providers", so a
/// deployment configured by environment alone could define no provider,
/// alias or API key.
#[test]
fn env_creates_list_entries_the_file_does_not_have() {
    let c = load_str(
        "",
        &[
            ("UAT_PROVIDERS__0__NAME", "m"),
            ("UAT_PROVIDERS__0__KIND", "mock"),
        ],
    )
    .unwrap();
    assert_eq!(c.providers.len(), 1);
    assert_eq!(c.providers[0].name, "m");

    let c = load_str(
        "",
        &[
            ("UAT_PROVIDERS__0__NAME", "m"),
            ("UAT_PROVIDERS__0__KIND", "mock"),
            ("UAT_MODELS__0__NAME", "fast"),
            ("UAT_MODELS__0__TARGETS__0", "m/a"),
            ("UAT_MODELS__0__TARGETS__1", "m/b"),
            ("UAT_AUTH__KEYS__0__NAME", "team-a"),
            ("UAT_AUTH__KEYS__0__KEY_ENV", "UAT_KEY_TEAM_A"),
            ("UAT_KEY_TEAM_A", "sk-a"),
        ],
    )
    .unwrap();
    assert_eq!(c.models[0].name, "fast");
    assert_eq!(c.models[0].targets, ["m/a", "m/b"]);
    assert_eq!(c.auth.keys.len(), 1);
    assert_eq!(c.auth.keys[0].name, "team-a");
}

/// Regression: variables were applied in string order, `__10__` before
/// `__2__`, so the 11th entry was "past the end". Twelve entries set in a
/// scrambled order load as twelve, in index order.
#[test]
fn twelve_list_entries_from_env_in_any_order() {
    let names: Vec<String> = (0..12)
        .map(|i| format!("UAT_PROVIDERS__{i}__NAME"))
        .collect();
    let kinds: Vec<String> = (0..12)
        .map(|i| format!("UAT_PROVIDERS__{i}__KIND"))
        .collect();
    let values: Vec<String> = (0..12).map(|i| format!("p{i}")).collect();
    let mut vars: Vec<(&str, &str)> = Vec::new();
    for i in [7, 11, 0, 3, 10, 1, 9, 2, 5, 8, 4, 6] {
        vars.push((&kinds[i], "mock"));
        vars.push((&names[i], &values[i]));
    }
    let c = load_str("", &vars).unwrap();
    let got: Vec<&str> = c.providers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(got, values);

    // Appending past a file's entries works the same way.
    let file = "[[providers]]\nname = \"p0\"\nkind = \"mock\"\n";
    let rest: Vec<(&str, &str)> = vars
        .iter()
        .copied()
        .filter(|(k, _)| !k.starts_with("UAT_PROVIDERS__0__"))
        .collect();
    let c = load_str(file, &rest).unwrap();
    let got: Vec<&str> = c.providers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(got, values);
}

/// A list has no gaps: an index past the next free one names the variable
/// and the index expected.
#[test]
fn env_list_gap_names_the_variable() {
    let e = load_err(
        "",
        &[
            ("UAT_PROVIDERS__0__NAME", "m"),
            ("UAT_PROVIDERS__0__KIND", "mock"),
            ("UAT_PROVIDERS__2__NAME", "n"),
        ],
    );
    assert!(
        e.contains("UAT_PROVIDERS__2__NAME") && e.contains("providers[1]"),
        "{e}"
    );
    let e = load_err("", &[("UAT_AUTH__KEYS__1__NAME", "a")]);
    assert!(
        e.contains("UAT_AUTH__KEYS__1__NAME") && e.contains("auth.keys[0]"),
        "{e}"
    );
}

/// Regression: `sqlite::memory:` passed validation, then `serve` failed at
/// start-up (the memory store needs a file). Refused by path, as are
/// `mode=memory` and an empty path.
#[test]
fn in_memory_or_pathless_sqlite_is_refused() {
    for url in [
        "sqlite::memory:",
        "sqlite://:memory:",
        "sqlite://?mode=memory",
        "sqlite://data/uat.db?mode=memory&cache=shared",
        "sqlite://",
        "sqlite:",
        "sqlite://?mode=rwc",
    ] {
        let e = load_err(&format!("[storage]\ndatabase_url = \"{url}\"\n"), &[]);
        assert!(
            e.contains("storage.database_url") && e.contains("file"),
            "{url}: {e}"
        );
    }
    let e = load_err("", &[("UAT_STORAGE__DATABASE_URL", "sqlite::memory:")]);
    assert!(e.contains("storage.database_url"), "{e}");
    for url in [
        "sqlite://./data/uat.db",
        "sqlite:uat.db",
        "sqlite:///var/lib/uat/uat.db?mode=rwc",
        "postgres://db/uat",
    ] {
        let e = load_err(&format!("[storage]\ndatabase_url = \"{url}\"\n"), &[]);
        assert_eq!(e, "accepted", "{url}");
    }
}

/// Regression: the default URL put `data_dir` in as it is, and SQLite URLs
/// percent-decode their path and split at `?`: `/tmp/a%41b` opened
/// `/tmp/aAb/uat.db`, `/tmp/x?y` opened `/tmp/x`.
#[test]
fn default_database_url_escapes_data_dir() {
    let url = |dir: &str| {
        load_str(&format!("[storage]\ndata_dir = \"{dir}\"\n"), &[])
            .unwrap()
            .storage
            .database_url()
    };
    assert_eq!(url("/tmp/a%41b"), "sqlite:///tmp/a%2541b/uat.db");
    assert_eq!(url("/tmp/x?y#z"), "sqlite:///tmp/x%3Fy%23z/uat.db");
    assert_eq!(url("./data"), "sqlite://./data/uat.db");
}

/// Regression: `cache.l3.purge_interval = "0s"` was accepted and purged every
/// 10 ms (the cache's floor). Unlike `memory.purge_interval`, `0s` is not
/// "never" here: intervals under 1 s are refused by path.
#[test]
fn cache_l3_purge_interval_under_one_second_is_refused() {
    for d in ["0s", "500ms"] {
        let e = load_err(&format!("[cache.l3]\npurge_interval = \"{d}\"\n"), &[]);
        assert!(e.contains("cache.l3.purge_interval"), "{d}: {e}");
    }
    let e = load_err("", &[("UAT_CACHE__L3__PURGE_INTERVAL", "0s")]);
    assert!(e.contains("cache.l3.purge_interval"), "{e}");
    let c = load_str("[cache.l3]\npurge_interval = \"1s\"\n", &[]).unwrap();
    assert_eq!(c.cache.l3.purge_interval, Duration::from_secs(1));
    // memory.purge_interval keeps "0s" as "never".
    assert!(load_str("[memory]\npurge_interval = \"0s\"\n", &[]).is_ok());
}

/// Regression: `server.log_level` was never checked. `inf0` is a valid
/// filter (a target named inf0) that logs almost nothing; bad syntax fell
/// back to `info` silently. Each directive must be a level or
/// `target=level`.
#[test]
fn log_level_typos_are_refused_by_path() {
    for level in [
        "inf0",
        "",
        " , ",
        "info,uat_router",
        "info,hyper=loud",
        "uat=",
        "=debug",
        "verbose",
    ] {
        let e = load_err(&format!("[server]\nlog_level = \"{level}\"\n"), &[]);
        assert!(e.contains("server.log_level"), "{level:?}: {e}");
    }
    let e = load_err("", &[("UAT_SERVER__LOG_LEVEL", "inf0")]);
    assert!(e.contains("server.log_level") && e.contains("inf0"), "{e}");
    for level in [
        "info",
        "WARN",
        "off",
        "3",
        "info,uat_router=debug,hyper=warn",
        "uat=trace",
        "info, tower_http = debug",
        "warn,uat_server[request{model=x}]=debug",
    ] {
        let c = load_str(&format!("[server]\nlog_level = \"{level}\"\n"), &[]);
        assert!(c.is_ok(), "{level:?}: {:?}", c.err());
    }
}

/// Regression: every segment of a variable was lowercased, so
/// `UAT_CACHE__MODEL_TTL__GPT-4O=1m` added `gpt-4o` beside the file's
/// `GPT-4o` (model names are case-sensitive). A name matches the file's
/// entries ignoring case; a new name is taken as written when it has a
/// lowercase letter, else lowercased.
#[test]
fn model_ttl_env_override_keeps_the_file_s_model_name() {
    let file = "[cache.model_ttl]\n\"GPT-4o\" = \"10m\"\n\"llama3\" = \"10m\"\n";
    let c = load_str(
        file,
        &[
            ("UAT_CACHE__MODEL_TTL__GPT-4O", "1m"),
            ("UAT_CACHE__MODEL_TTL__LLAMA3", "2m"),
            ("UAT_CACHE__MODEL_TTL__MISTRAL", "3m"),
            ("UAT_CACHE__MODEL_TTL__Qwen2.5", "4m"),
        ],
    )
    .unwrap();
    let ttl = &c.cache.model_ttl;
    let keys: Vec<&str> = ttl.keys().map(String::as_str).collect();
    assert_eq!(keys, ["GPT-4o", "Qwen2.5", "llama3", "mistral"]);
    assert_eq!(ttl["GPT-4o"], Duration::from_secs(60));
    assert_eq!(ttl["llama3"], Duration::from_secs(120));
    assert_eq!(ttl["mistral"], Duration::from_secs(180));
    assert_eq!(ttl["Qwen2.5"], Duration::from_secs(240));

    // Two file entries differing only in case: the variable is ambiguous.
    let e = load_err(
        "[cache.model_ttl]\n\"GPT-4o\" = \"10m\"\n\"gpt-4O\" = \"10m\"\n",
        &[("UAT_CACHE__MODEL_TTL__GPT-4O", "1m")],
    );
    assert!(e.contains("UAT_CACHE__MODEL_TTL__GPT-4O"), "{e}");
}
