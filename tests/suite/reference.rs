//! docs/reference.md is the code's own account: its generated sections — the flags (`--help` of
//! the built binary), the RPCs (the proto descriptor the server serves), the metrics (every
//! family registered), the token reasons — must equal what this test generates, and its
//! hand-written tables of routes and error codes must name exactly the routes the HTTP
//! listener serves and the codes `ErrorCode` has. After a change:
//!   UPDATE_REFERENCE=1 cargo test --test suite reference
//! rewrites the generated sections (the hand-written ones stay yours).
use std::collections::BTreeSet;

use prost::Message;

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/reference.md");

/// `--help` as a user's shell shows it (no environment variable set: clap shows their values).
fn flags() -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_token-sidecar"))
        .arg("--help")
        .env_clear()
        .output()
        .expect("token-sidecar --help");
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).expect("UTF-8");
    let help: Vec<&str> = help.lines().map(str::trim_end).collect();
    format!("```text\n{}\n```", help.join("\n"))
}

/// The TokenService methods from the descriptor set reflection serves, with their comments.
fn rpcs() -> String {
    let set = prost_types::FileDescriptorSet::decode(token_sidecar_api::pb::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set");
    let mut rows = vec![
        "| RPC | request | response | what |".to_owned(),
        "|---|---|---|---|".to_owned(),
    ];
    for file in &set.file {
        let comments: Vec<(Vec<i32>, String)> = file
            .source_code_info
            .iter()
            .flat_map(|info| &info.location)
            .map(|l| (l.path.clone(), l.leading_comments().to_owned()))
            .collect();
        for (s, service) in file.service.iter().enumerate() {
            for (m, method) in service.method.iter().enumerate() {
                // FileDescriptorProto.service = 6, ServiceDescriptorProto.method = 2.
                let path = vec![6, s as i32, 2, m as i32];
                let what = comments
                    .iter()
                    .find(|(p, _)| *p == path)
                    .map(|(_, c)| c.split_whitespace().collect::<Vec<_>>().join(" "))
                    .unwrap_or_default();
                let short = |t: &str| t.rsplit('.').next().unwrap_or(t).to_owned();
                rows.push(format!(
                    "| `{}.{}` | `{}` | `{}` | {} |",
                    service.name(),
                    method.name(),
                    short(method.input_type()),
                    short(method.output_type()),
                    what.replace('|', "\\|")
                ));
            }
        }
    }
    rows.join("\n")
}

/// Every metric family, as registered.
fn metrics() -> String {
    let metrics = token_sidecar::metrics::Metrics::new();
    let mut rows = vec![
        "| metric | type | what |".to_owned(),
        "|---|---|---|".to_owned(),
    ];
    for family in metrics.catalogue() {
        let shown = match family.kind {
            "counter" => format!("{}_total", family.name),
            _ => family.name.clone(),
        };
        rows.push(format!(
            "| `{shown}` | {} | {} |",
            family.kind,
            family.help.replace('|', "\\|")
        ));
    }
    rows.join("\n")
}

/// Every reason Verify answers, with what it means.
fn reasons() -> String {
    use token_sidecar::api::convert::proto_reason;
    let mut rows = vec![
        "| `reason` | what |".to_owned(),
        "|---|---|".to_owned(),
        "| `REASON_UNSPECIFIED` | valid |".to_owned(),
    ];
    for reason in token_sidecar::reason::Reason::ALL {
        rows.push(format!(
            "| `{}` | {reason} |",
            proto_reason(reason).as_str_name()
        ));
    }
    rows.join("\n")
}

fn generated() -> Vec<(&'static str, String)> {
    vec![
        ("flags", flags()),
        ("rpcs", rpcs()),
        ("metrics", metrics()),
        ("reasons", reasons()),
    ]
}

/// Where the text between `<!-- generated: NAME -->` and `<!-- end: NAME -->` lies, and the
/// text (without its last line break).
fn section<'a>(doc: &'a str, name: &str) -> (usize, usize, &'a str) {
    let open = format!("<!-- generated: {name} -->\n");
    let close = format!("<!-- end: {name} -->");
    let start = doc
        .find(&open)
        .unwrap_or_else(|| panic!("no {open:?} in docs/reference.md"))
        + open.len();
    let end = start
        + doc[start..]
            .find(&close)
            .unwrap_or_else(|| panic!("no {close:?} in docs/reference.md"));
    (start, end, doc[start..end].trim_end_matches('\n'))
}

/// The first cell (in backticks) of every row of the table under `heading`.
fn first_cells(doc: &str, heading: &str) -> BTreeSet<String> {
    let at = doc
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in docs/reference.md"));
    doc[at + heading.len()..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .filter_map(|row| {
            let cell = row.split('|').nth(1)?.trim();
            Some(cell.trim_matches('`').to_owned())
        })
        .collect()
}

#[test]
fn the_reference_is_generated_from_the_code() {
    let mut doc = std::fs::read_to_string(PATH).expect("docs/reference.md");
    let update = std::env::var_os("UPDATE_REFERENCE").is_some();
    let mut stale = Vec::new();
    for (name, text) in generated() {
        let (start, end, held) = section(&doc, name);
        if held != text {
            stale.push(name);
            doc.replace_range(start..end, &format!("{text}\n"));
        }
    }
    if update {
        std::fs::write(PATH, &doc).expect("write docs/reference.md");
        return;
    }
    assert!(
        stale.is_empty(),
        "docs/reference.md is stale in {stale:?}: run UPDATE_REFERENCE=1 cargo test --test suite \
         reference"
    );
}

#[test]
fn the_references_routes_and_error_codes_are_the_codes() {
    let doc = std::fs::read_to_string(PATH).expect("docs/reference.md");
    let routes = first_cells(&doc, "## HTTP routes");
    let served: BTreeSet<String> = token_sidecar::api::http::ROUTES
        .iter()
        .map(|r| r.to_string())
        .chain(["/metrics".to_owned()])
        .collect();
    assert_eq!(routes, served, "the routes table vs the routers");

    let codes = first_cells(&doc, "## Error codes");
    let defined: BTreeSet<String> = token_sidecar::error_code::ErrorCode::ALL
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    assert_eq!(codes, defined, "the error codes table vs ErrorCode");
}
