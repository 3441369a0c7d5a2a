//! Parsing `input`, every 400 case, and the base64 encoding.

use serde_json::json;
use uat_embed::{EmbedError, EmbeddingInput, MAX_INPUTS, decode_base64, encode_base64};

fn parse(v: serde_json::Value) -> Result<EmbeddingInput, EmbedError> {
    EmbeddingInput::from_json(&v)
}

#[test]
fn accepted_input_shapes() {
    assert_eq!(
        parse(json!("hi")),
        Ok(EmbeddingInput::Texts(vec!["hi".into()]))
    );
    assert_eq!(
        parse(json!(["a", "b"])),
        Ok(EmbeddingInput::Texts(vec!["a".into(), "b".into()]))
    );
    assert_eq!(
        parse(json!([1, 2, 3])),
        Ok(EmbeddingInput::TokenIds(vec![vec![1, 2, 3]]))
    );
    assert_eq!(
        parse(json!([[1, 2], [3]])),
        Ok(EmbeddingInput::TokenIds(vec![vec![1, 2], vec![3]]))
    );
    // Exactly the limit is fine; one token list of any length is one input.
    assert_eq!(
        parse(json!(vec!["x"; MAX_INPUTS])).map(|i| i.len()),
        Ok(MAX_INPUTS)
    );
    assert_eq!(parse(json!(vec![7; 5000])).map(|i| i.len()), Ok(1));
}

#[test]
fn every_bad_input_has_its_own_error() {
    assert_eq!(parse(json!([])), Err(EmbedError::EmptyInput));
    assert_eq!(
        parse(json!(vec!["x"; MAX_INPUTS + 1])),
        Err(EmbedError::TooManyInputs {
            got: 2049,
            max: 2048
        })
    );
    assert_eq!(
        parse(json!(vec![vec![1]; MAX_INPUTS + 1])),
        Err(EmbedError::TooManyInputs {
            got: 2049,
            max: 2048
        })
    );
    assert_eq!(
        parse(json!(["a", 5, "c"])),
        Err(EmbedError::InvalidInputItem {
            index: 1,
            expected: "a string"
        })
    );
    assert_eq!(
        parse(json!(["a", null])),
        Err(EmbedError::InvalidInputItem {
            index: 1,
            expected: "a string"
        })
    );
    assert!(matches!(
        parse(json!([{"text": "a"}])),
        Err(EmbedError::InvalidInputItem { index: 0, .. })
    ));
    assert!(matches!(
        parse(json!([[1, 2], "a"])),
        Err(EmbedError::InvalidInputItem { index: 1, .. })
    ));
    assert!(matches!(
        parse(json!([[1, 2], []])),
        Err(EmbedError::InvalidInputItem { index: 1, .. })
    ));
    assert!(matches!(
        parse(json!([[1, -2]])),
        Err(EmbedError::InvalidInputItem { index: 0, .. })
    ));
    assert!(matches!(
        parse(json!([1, 2.5])),
        Err(EmbedError::InvalidInputItem { index: 1, .. })
    ));
    assert!(matches!(
        parse(json!([1, "a"])),
        Err(EmbedError::InvalidInputItem { index: 1, .. })
    ));
    assert_eq!(parse(json!(42)), Err(EmbedError::InvalidInput));
    assert_eq!(parse(json!(null)), Err(EmbedError::InvalidInput));
    assert_eq!(parse(json!({"a": 1})), Err(EmbedError::InvalidInput));
    for e in [
        EmbedError::EmptyInput,
        EmbedError::TooManyInputs { got: 1, max: 1 },
        EmbedError::InvalidInput,
        EmbedError::InputTooLong {
            index: 0,
            tokens: 300,
            limit: 256,
        },
    ] {
        assert!(e.is_client_error(), "{e}");
    }
    assert!(!EmbedError::Overloaded { capacity: 1 }.is_client_error());
    let msg = EmbedError::InputTooLong {
        index: 2,
        tokens: 300,
        limit: 256,
    }
    .to_string();
    assert!(msg.contains("256") && msg.contains("input[2]"), "{msg}");
}

#[test]
fn base64_decodes_to_the_float_output() {
    let (_dir, _w, b) = crate::tiny::load(crate::tiny::Tiny::default());
    let v = uat_embed::EmbeddingBackend::embed_texts(&b, &["the cat sat on the mat."])
        .unwrap()
        .remove(0);
    let s = encode_base64(&v);
    assert_eq!(s.len(), (v.len() * 4).div_ceil(3) * 4);
    assert_eq!(decode_base64(&s).unwrap(), v);
    // Little-endian by definition: 1.0f32 is 00 00 80 3f.
    assert_eq!(encode_base64(&[1.0]), "AACAPw==");
    assert!(decode_base64("AAA=").is_err());
}
