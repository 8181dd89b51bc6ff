//! DPoP proofs made by an independent client: panva's `dpop` package on Node
//! (`tests/dpop/proofs.mjs`, installed under `target/dpop` by scripts/lib.sh). The sidecar's own
//! code never makes a proof the tests present.
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{Value, json};

/// A running proof maker; it holds the keys it generated.
pub struct ProofMaker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// A key the maker holds: its index and its RFC 7638 thumbprint.
#[derive(Debug, Clone)]
pub struct ClientKey {
    pub index: u64,
    pub jkt: String,
}

/// How a request looks to the proof.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub htm: &'a str,
    pub htu: &'a str,
    pub token: Option<&'a str>,
    pub nonce: Option<&'a str>,
}

impl ProofMaker {
    pub fn start() -> Self {
        let root = env!("CARGO_MANIFEST_DIR");
        let mut child = Command::new("node")
            .arg(format!("{root}/tests/dpop/proofs.mjs"))
            .env("DPOP_MODULES", format!("{root}/target/dpop/node_modules"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs tests/dpop/proofs.mjs");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Self {
            child,
            stdin,
            stdout,
        }
    }

    fn ask(&mut self, request: Value) -> Value {
        writeln!(self.stdin, "{request}").expect("write to the proof maker");
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read from the proof maker");
        let answer: Value = serde_json::from_str(&line).expect("the proof maker answers JSON");
        assert!(answer.get("error").is_none(), "{request} -> {answer}");
        answer
    }

    /// A new key pair (`ES256`, `PS256`, `RS256`, `Ed25519`).
    pub fn key(&mut self, alg: &str) -> ClientKey {
        let answer = self.ask(json!({"op": "key", "alg": alg}));
        ClientKey {
            index: answer["key"].as_u64().expect("key index"),
            jkt: answer["jkt"].as_str().expect("jkt").to_owned(),
        }
    }

    /// A valid proof for `target`, as the library makes it.
    pub fn proof(&mut self, key: &ClientKey, target: Target<'_>) -> String {
        let answer = self.ask(json!({
            "op": "proof", "key": key.index, "htm": target.htm, "htu": target.htu,
            "token": target.token, "nonce": target.nonce,
        }));
        answer["proof"].as_str().expect("proof").to_owned()
    }

    /// A hostile proof: the library's valid one with `header` and `claims` members replaced
    /// (null removes one; `"jwk": "private"` puts the private key in the header), signed as
    /// `sign` says (`key`, `none`, `hs256`).
    pub fn forge(
        &mut self,
        key: &ClientKey,
        target: Target<'_>,
        header: Value,
        claims: Value,
        sign: &str,
    ) -> String {
        let answer = self.ask(json!({
            "op": "forge", "key": key.index, "htm": target.htm, "htu": target.htu,
            "token": target.token, "nonce": target.nonce,
            "header": header, "claims": claims, "sign": sign,
        }));
        answer["proof"].as_str().expect("proof").to_owned()
    }
}

impl Drop for ProofMaker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real time now, in ms: a proof's `iat` is the maker's clock, so the sidecar's injected
/// clock is set to it before a proof is judged.
pub fn real_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0))
}
