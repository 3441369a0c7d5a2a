//! The pooling config read as sentence-transformers' `Pooling(**config)`
//! reads it.

use serde_json::json;
use uat_embed::{EmbedError, FolderSpec, Pooling};

/// The pooling a folder whose `1_Pooling/config.json` is `config` declares.
fn pooling_of(config: serde_json::Value) -> uat_embed::Result<Pooling> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("1_Pooling")).unwrap();
    std::fs::write(
        dir.path().join("modules.json"),
        json!([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
        ])
        .to_string(),
    )
    .unwrap();
    std::fs::write(dir.path().join("1_Pooling/config.json"), config.to_string()).unwrap();
    FolderSpec::read(dir.path()).map(|s| s.pooling)
}

const MAX: Pooling = Pooling {
    cls: false,
    max: true,
    mean: false,
    mean_sqrt_len: false,
};
const SQRT: Pooling = Pooling {
    cls: false,
    max: false,
    mean: false,
    mean_sqrt_len: true,
};

/// Regression: `pooling_mode_mean_tokens` defaulted to false (sentence-
/// transformers: true), and a `pooling_mode` string was added to the flags
/// (and matched case-sensitively) where sentence-transformers replaces every
/// flag with it.
#[test]
fn pooling_config_follows_sentence_transformers() {
    let cases = [
        // No flags: mean pooling.
        (json!({"word_embedding_dimension": 8}), Pooling::MEAN),
        // Only cls given: mean stays on beside it.
        (
            json!({"pooling_mode_cls_token": true}),
            Pooling {
                mean: true,
                ..Pooling::CLS
            },
        ),
        (
            json!({"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}),
            Pooling::CLS,
        ),
        // The string replaces every flag, in any case.
        (
            json!({"pooling_mode": "cls", "pooling_mode_mean_tokens": true}),
            Pooling::CLS,
        ),
        (json!({"pooling_mode": "CLS"}), Pooling::CLS),
        (json!({"pooling_mode": "Max"}), MAX),
        (
            json!({"pooling_mode": "mean", "pooling_mode_max_tokens": true,
                   "pooling_mode_lasttoken": true}),
            Pooling::MEAN,
        ),
        (json!({"pooling_mode": "mean_sqrt_len_tokens"}), SQRT),
        (
            json!({"pooling_mode": null, "pooling_mode_max_tokens": true}),
            { Pooling { mean: true, ..MAX } },
        ),
    ];
    for (config, want) in cases {
        let got = pooling_of(config.clone());
        assert_eq!(got, Ok(want), "{config}");
    }
    assert_eq!(Pooling::CLS.output_dim(8), 8);
    assert_eq!(Pooling { mean: true, ..MAX }.output_dim(8), 16);
}

#[test]
fn unsupported_or_empty_pooling_is_refused() {
    for config in [
        json!({"pooling_mode": "weightedmean"}),
        json!({"pooling_mode": "lasttoken"}),
        json!({"pooling_mode": "median"}),
        json!({"pooling_mode_weightedmean_tokens": true}),
    ] {
        assert!(
            matches!(pooling_of(config.clone()), Err(EmbedError::Unsupported(_))),
            "{config}"
        );
    }
    assert!(matches!(
        pooling_of(json!({"pooling_mode_mean_tokens": false})),
        Err(EmbedError::ModelLoad { .. })
    ));
}
