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

/// `input: ""` and `["", "a"]` were embedded as `[CLS][SEP]` with a 200;
/// OpenAI answers 400 for an empty string.
#[test]
fn empty_strings_are_refused_naming_the_item() {
    assert_eq!(parse(json!("")), Err(EmbedError::EmptyInput));
    assert_eq!(
        parse(json!(["", "a"])),
        Err(EmbedError::InvalidInputItem {
            index: 0,
            expected: "a non-empty string"
        })
    );
    let err = parse(json!(["a", "b", ""])).unwrap_err();
    assert!(err.is_client_error());
    assert!(err.to_string().contains("input[2]"), "{err}");
    // Whitespace is text.
    assert!(parse(json!([" ", "a"])).is_ok());
}

/// Token ids were fed to BERT as its own vocabulary ids, while OpenAI
/// clients (LangChain's `OpenAIEmbeddings`) send tiktoken `cl100k_base` ids.
#[test]
fn token_ids_are_read_as_cl100k_base_unless_the_model_says_so() {
    use uat_config::TokenIds;
    let ids = |v: serde_json::Value| parse(v).unwrap();
    assert_eq!(
        ids(json!([[15339, 1917], [9906, 11, 1917, 0]])).resolve_token_ids(TokenIds::Cl100kBase),
        Ok(EmbeddingInput::Texts(vec![
            "hello world".into(),
            "Hello, world!".into()
        ]))
    );
    assert_eq!(
        ids(json!([15339, 100257])).resolve_token_ids(TokenIds::Cl100kBase),
        Ok(EmbeddingInput::Texts(vec!["hello<|endoftext|>".into()]))
    );
    // A character split over two inputs: the halves are not UTF-8.
    let split = ids(json!([[9468, 239, 233]])).resolve_token_ids(TokenIds::Cl100kBase);
    assert!(matches!(split, Ok(EmbeddingInput::Texts(_))), "{split:?}");
    // Ids that are no cl100k_base token: a 400 naming the input and the id.
    for (bad, id) in [
        (json!([[1], [15339, 100256]]), 100256),
        (json!([[1], [100270]]), 100270),
        (json!([[1], [100277]]), 100277),
        (json!([[1], [4294967295u32]]), 4294967295),
    ] {
        let err = ids(bad)
            .resolve_token_ids(TokenIds::Cl100kBase)
            .unwrap_err();
        assert!(
            matches!(err, EmbedError::InvalidTokenId { index: 1, id: i, .. } if i == id),
            "{err:?}"
        );
        assert!(err.is_client_error());
        assert!(err.to_string().contains("input[1]"), "{err}");
    }
    // `token_ids = "model"`: the model's own ids, as they are.
    let raw = ids(json!([[101, 7592, 2088, 102]]));
    assert_eq!(
        raw.clone().resolve_token_ids(TokenIds::Model),
        Ok(raw.clone())
    );
    // Texts are left alone; decoding is cheap once the table is built.
    let texts = ids(json!(["a"]));
    assert_eq!(
        texts.clone().resolve_token_ids(TokenIds::Cl100kBase),
        Ok(texts.clone())
    );
    assert!(texts.resolves_inline(TokenIds::Cl100kBase));
    assert!(raw.resolves_inline(TokenIds::Model));
    assert!(ids(json!([[1, 2]])).resolves_inline(TokenIds::Cl100kBase));
    assert!(!ids(json!([vec![1; 10_000]])).resolves_inline(TokenIds::Cl100kBase));
}

/// A 4 MB text was tokenized whole before being cut at 256 tokens (4.4 s of
/// CPU, +290 MB). Now only a prefix is: the ids, and so the embedding, are
/// those of tokenizing the whole text and cutting it, on the real tokenizer.
#[test]
fn a_long_text_embeds_like_its_first_kilobytes() {
    let Some(dir) = crate::common::model_dir("a_long_text_embeds_like_its_first_kilobytes") else {
        return;
    };
    let tok = uat_embed::TextTokenizer::load(&dir.join("tokenizer.json"), 256, false).unwrap();
    let mut reference = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    reference.with_padding(None);
    reference.with_truncation(None).unwrap();
    let whole_then_cut = |text: &str| {
        let mut enc = reference.encode_fast(text, false).unwrap();
        enc.truncate(254, 0, tokenizers::TruncationDirection::Right);
        reference
            .post_process(enc, None, true)
            .unwrap()
            .get_ids()
            .to_vec()
    };
    let texts = [
        "The quick brown fox jumps over the lazy dog. ".repeat(400),
        "Ça déménage à Zürich, naïve café, smörgåsbord! ".repeat(400),
        "東京都は日本の首都であり、世界最大級の都市圏を形成している。".repeat(300),
        "https://example.com/a/very/long/path?with=query&and=more,".repeat(300),
        "internationalization".repeat(1000),
        "Σίσυφος ΟΔΥΣΣΕΥΣ ΣΑΣ'Σ λόγος. ".repeat(400),
    ];
    for text in &texts {
        assert_eq!(
            tok.encode(text, true).unwrap(),
            whole_then_cut(text),
            "{}",
            &text[..40]
        );
    }
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(95_000);
    assert!(long.len() > 4_000_000);
    let ids = tok.encode(&long, true).unwrap();
    assert_eq!(ids.len(), 256);
    assert_eq!(ids, tok.encode(&long[..8 * 1024], true).unwrap());
    let b = uat_embed::CandleBackend::load(&dir).unwrap();
    let got = uat_embed::EmbeddingBackend::embed_texts(&b, &[&long, &long[..8 * 1024]]).unwrap();
    assert_eq!(got[0], got[1]);
}
