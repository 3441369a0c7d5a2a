use super::*;

fn chat(body: Value) -> Value {
    let t = translate(&body).unwrap_or_else(|e| panic!("{body}: {}", e.message));
    serde_json::to_value(&t.chat).unwrap()
}

fn refused(body: Value) -> ApiError {
    match translate(&body) {
        Ok(t) => panic!("{body} was accepted: {:?}", t.chat),
        Err(e) => e,
    }
}

#[test]
fn a_string_input_with_instructions_is_a_system_and_a_user_message() {
    let c = chat(json!({
        "model": "m", "instructions": "Be brief.", "input": "Hi",
        "max_output_tokens": 50, "temperature": 0.2, "top_p": 0.9, "user": "u1", "seed": 4,
        "reasoning": {"effort": "low", "summary": "auto"},
        "metadata": {"a": "b"}, "store": true, "truncation": "auto", "service_tier": "auto",
        "prompt_cache_key": "k", "safety_identifier": "s", "include": ["reasoning.encrypted_content"],
        "some_future_field": 1,
    }));
    assert_eq!(
        c,
        json!({
            "model": "m",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            "max_completion_tokens": 50, "temperature": 0.2, "top_p": 0.9,
            "user": "u1", "seed": 4, "reasoning_effort": "low",
            "service_tier": "auto", "prompt_cache_key": "k", "safety_identifier": "s",
        }),
        "accepted settings are not sent upstream, chat's own are"
    );
}

#[test]
fn verbosity_and_caching_fields_are_forwarded_to_chat() {
    let c = chat(json!({
        "model": "m", "input": "Hi", "text": {"verbosity": "low"},
        "prompt_cache_key": "codex-123", "safety_identifier": "user-9", "service_tier": "flex",
        "max_tool_calls": 3,
    }));
    assert_eq!(c["verbosity"], "low");
    assert_eq!(c["prompt_cache_key"], "codex-123");
    assert_eq!(c["safety_identifier"], "user-9");
    assert_eq!(c["service_tier"], "flex");
    assert!(c.get("max_tool_calls").is_none(), "not enforced, not sent");
    assert!(c.get("response_format").is_none(), "{c}");
}

#[test]
fn the_answer_echoes_the_request_with_defaults() {
    let t = translate(&json!({"model": "m", "input": "Hi"})).unwrap();
    let e = &t.echo.0;
    assert_eq!(e["tools"], json!([]));
    assert_eq!(e["tool_choice"], "auto");
    assert_eq!(e["parallel_tool_calls"], true);
    assert_eq!(e["text"], json!({"format": {"type": "text"}}));
    assert_eq!(e["store"], false);
    assert_eq!(e["truncation"], "disabled");
    assert_eq!(e["metadata"], json!({}));
    let t = translate(&json!({"model": "m", "input": "Hi", "instructions": "x",
        "metadata": {"k": "v"}, "max_output_tokens": 9, "store": true}))
    .unwrap();
    assert_eq!(t.echo.0["instructions"], "x");
    assert_eq!(t.echo.0["metadata"], json!({"k": "v"}));
    assert_eq!(t.echo.0["max_output_tokens"], 9);
    assert_eq!(t.echo.0["store"], false, "nothing is stored");
}

#[test]
fn message_items_of_every_role_and_part_kind() {
    let c = chat(json!({"model": "m", "input": [
        {"role": "developer", "content": "Rules."},
        {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "More rules."}]},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "What is this?"},
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
            {"type": "input_image", "image_url": "https://example.com/a.png"},
            {"type": "input_image", "image_url": {"url": "https://example.com/b.png", "detail": "high"}},
        ]},
        {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant", "content": [
            {"type": "output_text", "text": "A cat", "annotations": []},
            {"type": "output_text", "text": ".", "annotations": []},
        ]},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
    ]}));
    assert_eq!(
        c["messages"],
        json!([
            {"role": "system", "content": "Rules."},
            {"role": "system", "content": [{"type": "text", "text": "More rules."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/b.png", "detail": "high"}},
            ]},
            {"role": "assistant", "content": "A cat."},
            {"role": "assistant", "content": "No."},
        ])
    );
}

#[test]
fn function_calls_merge_into_one_assistant_turn_and_outputs_are_tool_messages() {
    let c = chat(json!({"model": "m", "input": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "xyz"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_a", "name": "weather", "arguments": "{\"city\":\"Paris\"}"},
        {"type": "function_call", "call_id": "call_b", "name": "weather", "arguments": "{\"city\":\"Rome\"}", "status": "completed"},
        {"type": "function_call_output", "call_id": "call_a", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_b", "output": [
            {"type": "input_text", "text": "rain, "}, {"type": "output_text", "text": "12C"}]},
        {"type": "function_call", "call_id": "call_c", "name": "clock", "arguments": "{}"},
    ]}));
    assert_eq!(
        c["messages"],
        json!([
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_b", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}},
            ]},
            {"role": "tool", "content": "sunny", "tool_call_id": "call_a"},
            {"role": "tool", "content": "rain, 12C", "tool_call_id": "call_b"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_c", "type": "function", "function": {"name": "clock", "arguments": "{}"}},
            ]},
        ]),
        "the reasoning item is dropped"
    );
}

#[test]
fn function_tools_choices_formats_and_logprobs_take_the_chat_shape() {
    let c = chat(json!({"model": "m", "input": "x",
        "tools": [{"type": "function", "name": "f", "description": "d",
                   "parameters": {"type": "object", "properties": {}}, "strict": true}],
        "tool_choice": {"type": "function", "name": "f"}, "parallel_tool_calls": false,
        "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": true}},
        "top_logprobs": 2, "include": ["message.output_text.logprobs"], "stream": true,
    }));
    assert_eq!(
        c["tools"],
        json!([{"type": "function", "function": {"name": "f", "description": "d",
                "parameters": {"type": "object", "properties": {}}, "strict": true}}])
    );
    assert_eq!(
        c["tool_choice"],
        json!({"type": "function", "function": {"name": "f"}})
    );
    assert_eq!(c["parallel_tool_calls"], false);
    assert_eq!(
        c["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": true}})
    );
    assert_eq!(c["logprobs"], true);
    assert_eq!(c["top_logprobs"], 2);
    assert_eq!(c["stream"], true);
    assert_eq!(
        c["stream_options"],
        json!({"include_usage": true}),
        "usage for response.completed"
    );

    for choice in ["auto", "none", "required"] {
        let c = chat(json!({"model": "m", "input": "x", "tool_choice": choice,
            "tools": [{"type": "function", "name": "f"}]}));
        assert_eq!(c["tool_choice"], choice);
    }
    // Chat refuses these without tools: not sent.
    let c = chat(
        json!({"model": "m", "input": "x", "tools": [], "tool_choice": "auto", "parallel_tool_calls": true}),
    );
    assert!(
        c.get("tools").is_none()
            && c.get("tool_choice").is_none()
            && c.get("parallel_tool_calls").is_none(),
        "{c}"
    );
    let c = chat(json!({"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}}));
    assert_eq!(c["response_format"], json!({"type": "json_object"}));
    let c = chat(
        json!({"model": "m", "input": "x", "text": {"format": {"type": "text"}, "verbosity": "low"}}),
    );
    assert!(c.get("response_format").is_none(), "{c}");
    let c = chat(json!({"model": "m", "input": "x", "include": ["message.output_text.logprobs"]}));
    assert_eq!(c["logprobs"], true);
    assert!(c.get("top_logprobs").is_none());
    // Not asked back: not asked for.
    let c = chat(json!({"model": "m", "input": "x", "top_logprobs": 3}));
    assert!(
        c.get("logprobs").is_none() && c.get("top_logprobs").is_none(),
        "{c}"
    );
}

#[test]
fn include_values_asking_for_data_never_produced_are_ignored() {
    let t = translate(&json!({"model": "m", "input": "x", "include": [
        "reasoning.encrypted_content", "file_search_call.results", "web_search_call.action.sources",
        "message.input_image.image_url", "some.future.value",
    ]}))
    .unwrap_or_else(|e| panic!("{}", e.message));
    let c = serde_json::to_value(&t.chat).unwrap();
    assert!(c.get("logprobs").is_none(), "{c}");
}

/// Codex's `apply_patch` for gpt-5 models: a freeform tool with a Lark
/// grammar, and its calls in the history.
#[test]
fn custom_tools_are_functions_taking_one_string_and_their_calls_go_back() {
    let long_grammar = "start: begin_patch hunk+ end_patch\n".repeat(40);
    let t = translate(&json!({"model": "m", "input": [
        {"role": "user", "content": "Fix it"},
        {"type": "custom_tool_call", "id": "ctc_1", "call_id": "call_p", "name": "apply_patch",
         "input": "*** Begin Patch\n*** End Patch", "status": "completed"},
        {"type": "custom_tool_call_output", "call_id": "call_p", "output": "Done!"},
    ], "tools": [
        {"type": "custom", "name": "apply_patch", "description": "Edit files.",
         "format": {"type": "grammar", "syntax": "lark", "definition": long_grammar}},
        {"type": "custom", "name": "shout", "description": "Says it loud.",
         "format": {"type": "grammar", "syntax": "regex", "definition": "[A-Z ]+"}},
        {"type": "custom", "name": "free"},
        {"type": "function", "name": "f"},
    ], "tool_choice": {"type": "custom", "name": "apply_patch"}}))
    .unwrap_or_else(|e| panic!("{}", e.message));
    assert_eq!(t.custom_tools, ["apply_patch", "shout", "free"]);
    assert!(t.dropped_tools.is_empty());
    let c = serde_json::to_value(&t.chat).unwrap();
    let string_input = json!({"type": "object", "properties": {"input": {"type": "string"}},
                              "required": ["input"], "additionalProperties": false});
    assert_eq!(
        c["tools"][0],
        json!({"type": "function", "function": {"name": "apply_patch", "description": "Edit files.",
               "parameters": string_input}}),
        "a long grammar is left out"
    );
    assert_eq!(
        c["tools"][1]["function"]["description"],
        "Says it loud.\n\nThe input must match this regex definition:\n[A-Z ]+"
    );
    assert_eq!(
        c["tools"][2],
        json!({"type": "function", "function": {"name": "free", "parameters": string_input}})
    );
    assert_eq!(
        c["tool_choice"],
        json!({"type": "function", "function": {"name": "apply_patch"}})
    );
    let call = &c["messages"][1];
    assert_eq!(call["role"], "assistant");
    assert_eq!(call["tool_calls"][0]["id"], "call_p");
    assert_eq!(call["tool_calls"][0]["function"]["name"], "apply_patch");
    let args: Value = serde_json::from_str(
        call["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(args, json!({"input": "*** Begin Patch\n*** End Patch"}));
    assert_eq!(
        c["messages"][2],
        json!({"role": "tool", "content": "Done!", "tool_call_id": "call_p"})
    );
}

#[test]
fn built_in_tools_and_their_items_are_left_out_and_reported() {
    let t = translate(&json!({"model": "m", "input": [
        {"role": "user", "content": "Search and list"},
        {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search"}},
        {"type": "local_shell_call", "id": "ls_1", "call_id": "c1", "action": {"type": "exec"}},
        {"type": "local_shell_call_output", "call_id": "c1", "output": "a.txt"},
        {"type": "mcp_list_tools", "id": "m", "server_label": "s", "tools": []},
        {"type": "web_search_call", "id": "ws_2"},
        {"role": "user", "content": "Go on"},
    ], "tools": [
        {"type": "web_search"}, {"type": "function", "name": "f"}, {"type": "local_shell"},
        {"type": "web_search"}, {"type": "mcp", "server_label": "s"},
    ], "tool_choice": "required"}))
    .unwrap_or_else(|e| panic!("{}", e.message));
    assert_eq!(t.dropped_tools, ["web_search", "local_shell", "mcp"]);
    assert_eq!(
        t.dropped_items,
        [
            "web_search_call",
            "local_shell_call",
            "local_shell_call_output",
            "mcp_list_tools"
        ]
    );
    let c = serde_json::to_value(&t.chat).unwrap();
    assert_eq!(c["tools"].as_array().unwrap().len(), 1, "{c}");
    assert_eq!(c["tools"][0]["function"]["name"], "f");
    assert_eq!(c["tool_choice"], "required");
    assert_eq!(
        c["messages"],
        json!([{"role": "user", "content": "Search and list"}, {"role": "user", "content": "Go on"}])
    );
    // Only built-in tools: no tools at all, nor a choice among them.
    let c = chat(
        json!({"model": "m", "input": "x", "tools": [{"type": "web_search_preview"}],
                        "tool_choice": "auto"}),
    );
    assert!(
        c.get("tools").is_none() && c.get("tool_choice").is_none(),
        "{c}"
    );
    // Choosing one that is left out cannot be honoured.
    let e = refused(
        json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}],
                           "tool_choice": {"type": "web_search"}}),
    );
    assert_eq!(e.param.as_deref(), Some("tool_choice"));
    assert!(e.message.contains("`web_search`"), "{}", e.message);
}

/// The Agents SDK's `ToolOutputImage`.
#[test]
fn tool_output_images_follow_the_tool_messages_as_a_user_message() {
    let c = chat(json!({"model": "m", "input": [
        {"role": "user", "content": "Screenshots?"},
        {"type": "function_call", "call_id": "a", "name": "shot", "arguments": "{}"},
        {"type": "function_call", "call_id": "b", "name": "shot", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "a", "output": [
            {"type": "input_text", "text": "the page"},
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
        ]},
        {"type": "function_call_output", "call_id": "b", "output": [
            {"type": "input_image", "image_url": {"url": "https://x/b.png"}},
        ]},
        {"role": "user", "content": "Compare them"},
    ]}));
    assert_eq!(
        c["messages"],
        json!([
            {"role": "user", "content": "Screenshots?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "shot", "arguments": "{}"}},
                {"id": "b", "type": "function", "function": {"name": "shot", "arguments": "{}"}},
            ]},
            {"role": "tool", "content": "the page", "tool_call_id": "a"},
            {"role": "tool", "content": "(the output is the image(s) in the next message)", "tool_call_id": "b"},
            {"role": "user", "content": [
                {"type": "text", "text": "The image output of tool call `a`:"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                {"type": "text", "text": "The image output of tool call `b`:"},
                {"type": "image_url", "image_url": {"url": "https://x/b.png"}},
            ]},
            {"role": "user", "content": "Compare them"},
        ])
    );
    // At the end of the input too.
    let c = chat(json!({"model": "m", "input": [
        {"type": "function_call_output", "call_id": "a", "output": [
            {"type": "input_image", "image_url": "https://x/a.png"}]},
    ]}));
    assert_eq!(c["messages"][1]["role"], "user", "{c}");
}

#[test]
fn state_and_unknown_items_are_refused_by_name() {
    let cases = [
        (
            json!({"model": "m", "input": "x", "previous_response_id": "resp_1"}),
            "previous_response_id",
        ),
        (
            json!({"model": "m", "input": "x", "conversation": "conv_1"}),
            "conversation",
        ),
        (
            json!({"model": "m", "input": "x", "background": true}),
            "background",
        ),
        (
            json!({"model": "m", "input": "x", "prompt": {"id": "pmpt_1"}}),
            "prompt",
        ),
        (
            json!({"model": "m", "input": "x", "tools": [{"type": "function", "name": "f"}, {"name": "g"}]}),
            "tools[1].type",
        ),
        (
            json!({"model": "m", "input": "x", "tools": [{"type": "custom"}]}),
            "tools[0].name",
        ),
        (
            json!({"model": "m", "input": "x", "tools": [{"type": "function"}]}),
            "tools[0].name",
        ),
        (
            json!({"model": "m", "input": "x", "tool_choice": {"type": "web_search"}}),
            "tool_choice",
        ),
        (
            json!({"model": "m", "input": [{"role": "user", "content": "a"}, {"type": "compaction_summary", "id": "ws"}]}),
            "input[1].type",
        ),
        (
            json!({"model": "m", "input": [{"type": "custom_tool_call", "call_id": "c", "name": "f"}]}),
            "input[0].input",
        ),
        (
            json!({"model": "m", "input": [{"role": "assistant", "content": [
                {"type": "output_text", "text": "a"}, {"type": "input_image", "image_url": "https://x/y.png"}]}]}),
            "input[0].content[1].type",
        ),
        (
            json!({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}),
            "input[0].type",
        ),
        (
            json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}),
            "input[0].content[0].type",
        ),
        (
            json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}),
            "input[0].content[0].file_id",
        ),
        (
            json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": {"u": 1}}]}]}),
            "input[0].content[0].image_url",
        ),
        (
            json!({"model": "m", "input": [{"role": "tool", "content": "a"}]}),
            "input[0].role",
        ),
        (
            json!({"model": "m", "input": [{"content": "a"}]}),
            "input[0].type",
        ),
        (
            json!({"model": "m", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}),
            "input[0].call_id",
        ),
        (
            json!({"model": "m", "input": [{"type": "function_call_output", "call_id": "c", "output": [{"type": "input_file", "file_id": "f"}]}]}),
            "input[0].output[0].type",
        ),
        (
            json!({"model": "m", "input": "x", "text": {"format": {"type": "grammar"}}}),
            "text.format",
        ),
        (
            json!({"model": "m", "input": "x", "include": [1]}),
            "include[0]",
        ),
        (
            json!({"model": "m", "input": "x", "truncation": "sometimes"}),
            "truncation",
        ),
        (json!({"model": "m", "input": "x", "n": 2}), "n"),
        (json!({"input": "x"}), "model"),
        (json!({"model": "", "input": "x"}), "model"),
        (json!({"model": "m"}), "input"),
        (json!({"model": "m", "input": 3}), "input"),
        (json!({"model": "m", "input": []}), "input"),
        (
            json!({"model": "m", "instructions": "Be brief.", "input": []}),
            "input",
        ),
        (
            json!({"model": "m", "instructions": "Be brief.", "input": [
                {"type": "reasoning", "id": "rs", "summary": []}, {"type": "web_search_call", "id": "ws"}]}),
            "input",
        ),
        (
            json!({"model": "m", "input": "x", "temperature": "hot"}),
            "temperature",
        ),
        (
            json!({"model": "m", "input": "x", "tools": {"type": "function"}}),
            "tools",
        ),
    ];
    for (body, param) in cases {
        let e = refused(body.clone());
        assert_eq!(e.status, 400, "{body}");
        assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
    }
    let e = refused(json!({"model": "m", "input": "x", "previous_response_id": "resp_1"}));
    assert_eq!(e.code, Some("unsupported_parameter"));
    assert!(
        e.message.contains("whole conversation as `input`"),
        "{}",
        e.message
    );
    assert_eq!(refused(json!([1])).status, 400);
    // Null is absent.
    chat(
        json!({"model": "m", "input": "x", "previous_response_id": null, "conversation": null, "n": 1}),
    );
}
