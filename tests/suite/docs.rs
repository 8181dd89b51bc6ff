//! Docs that cannot drift (issue 42): what the documents say is read against the code and the
//! repository — the routes `--help` names against the router's list, the algorithms against
//! the key parser's, the files SECURITY.md names against the tree, and the deploy README's
//! hooks against the manifests.
use std::path::Path;

use clap::CommandFactory;
use token_sidecar::api::http::ROUTES;
use token_sidecar::config::Cli;
use token_sidecar::token::SUPPORTED_ALGORITHMS;

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

#[test]
fn the_http_listeners_help_names_every_route_it_serves() {
    let help = Cli::command().render_long_help().to_string();
    let described = help
        .split("--http-listen")
        .nth(1)
        .and_then(|rest| rest.split("[env: TOKEN_SIDECAR_HTTP_LISTEN").next())
        .expect("--http-listen in --help");
    let described = described.split_whitespace().collect::<Vec<_>>().join(" ");
    for route in ROUTES {
        assert!(
            described.contains(route),
            "--http-listen's help does not name {route}: {described}"
        );
    }
}

#[test]
fn every_supported_algorithm_is_in_the_contract_and_the_guide() {
    let contract = read("docs/contract.md")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let guide = read("docs/guide.md");
    for alg in SUPPORTED_ALGORITHMS.split(", ") {
        assert!(
            contract.contains(alg),
            "docs/contract.md does not list {alg}"
        );
        assert!(guide.contains(alg), "docs/guide.md does not list {alg}");
    }
}

#[test]
fn security_md_names_only_files_that_exist_and_a_private_route() {
    let security = read("SECURITY.md");
    assert!(
        security.contains("private vulnerability") && security.contains("Report a"),
        "SECURITY.md gives a private reporting route"
    );
    for (i, quoted) in security.split('`').enumerate() {
        let looks_like_a_file = i % 2 == 1
            && !quoted.starts_with('-')
            && (quoted.ends_with(".md") || quoted.contains('/'))
            && !quoted.contains(' ');
        if looks_like_a_file {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(quoted);
            assert!(
                path.exists(),
                "SECURITY.md names {quoted}, which does not exist"
            );
        }
    }
    for missing in ["SPEC.md", "CODEOWNERS"] {
        if security.contains(missing) {
            assert!(
                Path::new(env!("CARGO_MANIFEST_DIR")).join(missing).exists(),
                "SECURITY.md cites {missing}, which the repository does not have"
            );
        }
    }
}

#[test]
fn the_deploy_readme_speaks_of_a_pre_stop_hook_only_where_a_manifest_has_one() {
    let readme = read("deploy/README.md");
    let mut manifests = String::new();
    let mut stack = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("deploy/") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                manifests.push_str(&std::fs::read_to_string(&path).expect("manifest"));
            }
        }
    }
    let hooked = manifests
        .lines()
        .any(|line| line.trim_start().starts_with("preStop:"));
    if !hooked {
        assert!(
            !readme.contains("preStop"),
            "deploy/README.md speaks of a preStop hook, and no manifest has one"
        );
    }
    let drain = manifests.contains("TOKEN_SIDECAR_DRAIN_DELAY")
        || read("deploy/k8s/base/settings.env").contains("TOKEN_SIDECAR_DRAIN_DELAY");
    assert!(
        !readme.contains("drain delay") || drain,
        "deploy/README.md speaks of a drain delay no manifest sets"
    );
}

#[test]
fn the_docs_name_no_release_tag_the_repository_does_not_have() {
    let readme = [
        "README.md",
        "docs/guide.md",
        "crates/token-sidecar-api/README.md",
    ]
    .map(read)
    .join("\n");
    let named: Vec<&str> = readme
        .split("tag =")
        .skip(1)
        .filter_map(|rest| rest.trim_start().strip_prefix('"')?.split('"').next())
        .collect();
    if named.is_empty() {
        return;
    }
    let tags = std::process::Command::new("git")
        .args(["tag", "--list"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git tag --list");
    let tags = String::from_utf8_lossy(&tags.stdout);
    for tag in named {
        assert!(
            tags.lines().any(|t| t == tag),
            "the docs pin tag {tag:?}, which the repository does not have"
        );
    }
}

/// A runner that sets CARGO_TARGET_DIR (or a config's build.target-dir) builds elsewhere: every
/// script asks cargo where (`cargo_target_dir` in scripts/lib.sh), none guesses `./target`.
#[test]
fn no_script_guesses_where_cargo_puts_its_output() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    let mut guesses = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("scripts/") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            let code = line.split(" #").next().unwrap_or_default();
            if code.trim_start().starts_with('#') {
                continue;
            }
            for guess in [
                "target/release",
                "target/debug",
                "\"target\", \"criterion\"",
            ] {
                if code.contains(guess) {
                    guesses.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(guesses.is_empty(), "{}", guesses.join("\n"));
    assert!(read("scripts/lib.sh").contains("cargo metadata"));
}

/// The README is a quick start a stranger reads in one sitting (the session, and the two ways in:
/// our tokens and the identity provider's); the rest is the guide's and the reference's (docs/).
#[test]
fn the_readme_is_a_quick_start_of_at_most_240_lines() {
    let readme = read("README.md");
    assert!(
        readme.lines().count() <= 240,
        "README.md has {} lines: move what is not the quick start to docs/guide.md",
        readme.lines().count()
    );
    for link in ["docs/guide.md", "docs/reference.md", "deploy/README.md"] {
        assert!(
            readme.contains(&format!("]({link}")),
            "README.md links {link}"
        );
    }
}

/// A script that creates a database for itself drops it when it exits (scripts/lib.sh,
/// `drop_at_exit` and `drop_databases_now` in its EXIT trap); scripts/test drops the tests' own.
#[test]
fn every_script_drops_the_databases_it_creates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    for entry in std::fs::read_dir(&dir).expect("scripts/") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if !text.contains("CREATE DATABASE") || path.ends_with("test") {
            continue;
        }
        let trap = text
            .lines()
            .find(|l| l.starts_with("trap ") && l.ends_with(" EXIT"))
            .unwrap_or_default();
        assert!(
            text.contains("drop_at_exit") && trap.contains("drop_databases_now"),
            "{} creates a database and does not drop it at exit",
            path.display()
        );
    }
}

/// The README's move from `jwt_authn` to the filter is an Envoy configuration as pasted: its
/// `http_filters` entry, in a listener beside the sidecar's cluster, passes `envoy --mode
/// validate` (with the built filter where the README names `/etc/envoy/`).
#[test]
fn the_readmes_filter_entry_is_a_valid_envoy_filter() {
    crate::require!(Envoy, WasmFilter);
    let readme = read("README.md");
    let entry = readme
        .split("```yaml\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .find(|block| block.contains("envoy.filters.http.wasm"))
        .expect("the README's filter entry");
    let wasm = crate::common::services::wasm_filter();
    let entry = entry.replace(
        "/etc/envoy/token_sidecar_wasm.wasm",
        &wasm.display().to_string(),
    );
    let indented: String = entry
        .lines()
        .map(|l| format!("                  {l}\n"))
        .collect();
    let config = format!(
        r#"static_resources:
  listeners:
    - address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: readme
                route_config: {{virtual_hosts: [{{name: app, domains: ["*"], routes: [{{match: {{prefix: /}}, direct_response: {{status: 200}}}}]}}]}}
                http_filters:
{indented}                  - name: envoy.filters.http.router
                    typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
    - name: token_sidecar_http
      type: STATIC
      load_assignment: {{cluster_name: token_sidecar_http, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 8081}}}}}}}}]}}]}}
"#
    );
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, config).expect("write");
    let out = std::process::Command::new("envoy")
        .args(["--mode", "validate", "-l", "error", "-c"])
        .arg(&path)
        .output()
        .expect("envoy runs");
    assert!(
        out.status.success(),
        "envoy refuses the README's filter entry: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
