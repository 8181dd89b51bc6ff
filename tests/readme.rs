//! The README's grpcurl session stays true: every call in its "A session with grpcurl" section is
//! made the way grpcurl makes it — through server reflection, with no compiled-in proto — and its
//! answer must match the output the README shows.
//!
//! How the README is read (so that editing it keeps the test meaningful):
//! - every ```sh block of that section runs in order against one fresh sidecar;
//! - `grpcurl [-plaintext] [-H 'k: v'] [-d BODY] ADDR (list | SERVICE/METHOD)` is a call;
//!   `NAME=$(grpcurl … | jq -r .field)` is a call whose answer's field is kept in `$NAME`;
//! - `# ` lines right after a call (no blank line between) are its expected output: JSON compared
//!   as values (a `"..."` string matches any value, every other member must be equal and no
//!   member may be missing or extra), or plain lines (a line ending in `...` matches by prefix);
//! - `# ` lines after a blank line are descriptions and are not checked.
mod common;

use std::collections::HashMap;

use common::{Backend, TestApp};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::Value;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

const README_ADDRESS: &str = "localhost:50051";

#[tokio::test]
async fn the_readme_grpcurl_session_gives_the_outputs_it_shows() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let steps = session_steps(&readme);
    assert!(
        steps.len() >= 10,
        "the README session should show the API; found {} calls",
        steps.len()
    );
    let app = TestApp::spawn(Backend::Sqlite).await;
    let channel = Channel::from_shared(format!("http://{}", app.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut client = ReflectingClient::new(channel);
    let mut vars: HashMap<String, String> = HashMap::new();
    for step in &steps {
        let words = shell_words(&step.command, &vars);
        let call = Call::parse(&words).unwrap_or_else(|e| panic!("{}: {e}", step.command));
        let output = client.run(&call).await;
        if let Some(name) = &step.capture {
            let field = step.capture_field.as_deref().unwrap_or_default();
            let value: Value = serde_json::from_str(&output).unwrap_or_else(|_| {
                panic!("`{}` should answer JSON, got:\n{output}", step.command)
            });
            let kept = value[field]
                .as_str()
                .unwrap_or_else(|| panic!("`{}` has no string `{field}`:\n{output}", step.command));
            vars.insert(name.clone(), kept.to_string());
        }
        if let Some(expected) = &step.expected {
            assert_output_matches(expected, &output, &step.command);
        }
    }
}

/// One call of the README session.
#[derive(Debug)]
struct Step {
    command: String,
    capture: Option<String>,
    capture_field: Option<String>,
    expected: Option<String>,
}

/// The calls of the "A session with grpcurl" section, in order.
fn session_steps(readme: &str) -> Vec<Step> {
    let start = readme
        .find("## A session with grpcurl")
        .expect("README has the grpcurl session section");
    let section = &readme[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let section = &section[..end];
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
            command.pop();
            command.push(' ');
            command.push_str(
                lines
                    .next()
                    .expect("a continued line continues")
                    .trim_start(),
            );
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
        let (capture, capture_field, command) = split_capture(&command);
        steps.push(Step {
            command,
            capture,
            capture_field,
            expected: (!expected.is_empty()).then(|| expected.join("\n")),
        });
    }
    steps
}

/// `NAME=$(grpcurl … | jq -r .field)` → (NAME, field, the grpcurl part).
fn split_capture(command: &str) -> (Option<String>, Option<String>, String) {
    let Some((name, rest)) = command.split_once("=$(") else {
        return (None, None, command.to_string());
    };
    let inner = rest.trim_end().strip_suffix(')').expect("$( … ) is closed");
    let (call, jq) = inner
        .rsplit_once('|')
        .expect("a captured call pipes into jq");
    let field = jq
        .trim()
        .strip_prefix("jq -r .")
        .expect("captures use `jq -r .field`");
    (
        Some(name.trim().to_string()),
        Some(field.to_string()),
        call.trim().to_string(),
    )
}

/// Splits a command line into words as a POSIX shell would for the subset the README uses:
/// single quotes, double quotes with `\"` `\\` `\$`, and `$NAME` expansion outside single quotes.
fn shell_words(line: &str, vars: &HashMap<String, String>) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    let expand = |chars: &mut std::iter::Peekable<std::str::Chars>, word: &mut String| {
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                chars.next();
            } else {
                break;
            }
        }
        let value = vars
            .get(&name)
            .unwrap_or_else(|| panic!("${name} is used before it is set"));
        word.push_str(value);
    };
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    word.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => match chars.next() {
                            Some(e @ ('"' | '\\' | '$')) => word.push(e),
                            Some(other) => {
                                word.push('\\');
                                word.push(other);
                            }
                            None => word.push('\\'),
                        },
                        '$' => expand(&mut chars, &mut word),
                        other => word.push(other),
                    }
                }
            }
            '$' => {
                in_word = true;
                expand(&mut chars, &mut word);
            }
            '\\' => {
                in_word = true;
                if let Some(e) = chars.next() {
                    word.push(e);
                }
            }
            other => {
                in_word = true;
                word.push(other);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// A grpcurl invocation.
#[derive(Debug)]
struct Call {
    headers: Vec<(String, String)>,
    body: Option<String>,
    verb: String,
}

impl Call {
    fn parse(words: &[String]) -> Result<Self, String> {
        let mut it = words.iter();
        if it.next().map(String::as_str) != Some("grpcurl") {
            return Err("not a grpcurl call".into());
        }
        let (mut headers, mut body, mut rest) = (Vec::new(), None, Vec::new());
        while let Some(word) = it.next() {
            match word.as_str() {
                "-plaintext" => {}
                "-d" => body = Some(it.next().ok_or("-d needs a body")?.clone()),
                "-H" => {
                    let header = it.next().ok_or("-H needs a header")?;
                    let (k, v) = header.split_once(':').ok_or("a header is `name: value`")?;
                    headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
                flag if flag.starts_with('-') => return Err(format!("unknown flag {flag}")),
                other => rest.push(other.to_string()),
            }
        }
        match rest.as_slice() {
            [address, verb] if address == README_ADDRESS => Ok(Self {
                headers,
                body,
                verb: verb.clone(),
            }),
            _ => Err(format!("expected `{README_ADDRESS} VERB`, got {rest:?}")),
        }
    }
}

/// A client that knows nothing of our API but what server reflection tells it.
struct ReflectingClient {
    channel: Channel,
    pool: DescriptorPool,
}

impl ReflectingClient {
    fn new(channel: Channel) -> Self {
        Self {
            channel,
            pool: DescriptorPool::new(),
        }
    }

    /// Runs a call and renders its result as grpcurl prints it.
    async fn run(&mut self, call: &Call) -> String {
        if call.verb == "list" {
            return self.list().await.join("\n");
        }
        let (service, method) = call.verb.rsplit_once('/').expect("SERVICE/METHOD");
        self.load_symbol(service).await;
        let method = self
            .pool
            .get_service_by_name(service)
            .unwrap_or_else(|| panic!("reflection does not know {service}"))
            .methods()
            .find(|m| m.name() == method)
            .unwrap_or_else(|| panic!("{service} has no method {method}"));
        let body = call.body.as_deref().unwrap_or("{}");
        let mut deserializer = serde_json::Deserializer::from_str(body);
        let request = DynamicMessage::deserialize(method.input(), &mut deserializer)
            .unwrap_or_else(|e| panic!("request body {body} does not parse: {e}"));
        let mut request = tonic::Request::new(request);
        for (k, v) in &call.headers {
            let key: tonic::metadata::MetadataKey<tonic::metadata::Ascii> =
                k.parse().expect("header name");
            request
                .metadata_mut()
                .insert(key, v.parse().expect("header value"));
        }
        let path = format!("/{service}/{}", method.name())
            .parse()
            .expect("method path");
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready().await.expect("channel ready");
        let codec = DynamicCodec {
            output: method.output(),
        };
        match grpc.unary(request, path, codec).await {
            Ok(response) => {
                let options = SerializeOptions::new().use_proto_field_name(true);
                let value = response
                    .into_inner()
                    .serialize_with_options(serde_json::value::Serializer, &options)
                    .expect("response renders as JSON");
                serde_json::to_string_pretty(&value).expect("JSON text")
            }
            Err(status) => format!(
                "ERROR:\n  Code: {:?}\n  Message: {}",
                status.code(),
                status.message()
            ),
        }
    }

    async fn reflection(&self, request: MessageRequest) -> MessageResponse {
        let mut client = ServerReflectionClient::new(self.channel.clone());
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        };
        let mut answers = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("reflection answers")
            .into_inner();
        answers
            .message()
            .await
            .expect("reflection stream")
            .and_then(|r| r.message_response)
            .expect("one reflection answer")
    }

    async fn list(&self) -> Vec<String> {
        match self
            .reflection(MessageRequest::ListServices(String::new()))
            .await
        {
            MessageResponse::ListServicesResponse(list) => {
                let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
                names.sort();
                names
            }
            other => panic!("unexpected reflection answer {other:?}"),
        }
    }

    /// Fetches the file defining `symbol` and every file it imports, as grpcurl does.
    async fn load_symbol(&mut self, symbol: &str) {
        if self.pool.get_service_by_name(symbol).is_some() {
            return;
        }
        let mut files = Vec::new();
        let mut wanted = vec![MessageRequest::FileContainingSymbol(symbol.to_string())];
        while let Some(request) = wanted.pop() {
            let MessageResponse::FileDescriptorResponse(answer) = self.reflection(request).await
            else {
                panic!("reflection has no file for {symbol}");
            };
            for bytes in answer.file_descriptor_proto {
                let file = prost_types::FileDescriptorProto::decode(bytes.as_slice())
                    .expect("reflection sends valid descriptors");
                files.push(file);
            }
            let known: Vec<String> = files.iter().filter_map(|f| f.name.clone()).collect();
            for file in &files {
                for dependency in &file.dependency {
                    let pending = wanted
                        .iter()
                        .any(|w| matches!(w, MessageRequest::FileByFilename(n) if n == dependency));
                    if !known.contains(dependency) && !pending {
                        wanted.push(MessageRequest::FileByFilename(dependency.clone()));
                    }
                }
            }
        }
        self.pool
            .add_file_descriptor_protos(files)
            .expect("the reflected files form a complete set");
    }
}

/// Encodes and decodes messages described at run time.
struct DynamicCodec {
    output: MessageDescriptor,
}

struct DynamicEncoder;

struct DynamicDecoder(MessageDescriptor);

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder(self.output.clone())
    }
}

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = tonic::Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        item.encode(dst)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        DynamicMessage::decode(self.0.clone(), src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

/// Compares an answer with the README's rendering of it.
fn assert_output_matches(expected: &str, actual: &str, command: &str) {
    if expected.trim_start().starts_with('{') {
        let want: Value = serde_json::from_str(expected).unwrap_or_else(|e| {
            panic!("README output for `{command}` is not JSON ({e}):\n{expected}")
        });
        let got: Value = serde_json::from_str(actual).unwrap_or_else(|_| {
            panic!("`{command}` answered\n{actual}\nbut the README shows\n{expected}")
        });
        if let Err(at) = json_matches(&want, &got, "") {
            panic!(
                "`{command}` answered\n{actual}\nbut the README shows\n{expected}\n(first difference at `{at}`)"
            );
        }
        return;
    }
    let got: Vec<&str> = actual.lines().collect();
    let want: Vec<&str> = expected.lines().collect();
    let same = got.len() == want.len()
        && want
            .iter()
            .zip(&got)
            .all(|(w, g)| match w.strip_suffix("...") {
                Some(prefix) => g.starts_with(prefix),
                None => w == g,
            });
    assert!(
        same,
        "`{command}` answered\n{actual}\nbut the README shows\n{expected}"
    );
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
        (w, g) if w == g => Ok(()),
        _ => Err(at.to_string()),
    }
}

#[test]
fn the_shell_subset_splits_like_a_shell() {
    let vars = HashMap::from([("TOKEN".to_string(), "a.b.c".to_string())]);
    assert_eq!(
        shell_words(
            r#"grpcurl -plaintext -d "{\"token\":\"$TOKEN\"}" localhost:50051 x/Y"#,
            &vars
        ),
        vec![
            "grpcurl",
            "-plaintext",
            "-d",
            r#"{"token":"a.b.c"}"#,
            "localhost:50051",
            "x/Y"
        ]
    );
    assert_eq!(
        shell_words(r#"a '{"k":"$TOKEN"}' b\ c"#, &vars),
        vec!["a", r#"{"k":"$TOKEN"}"#, "b c"]
    );
}

#[test]
fn json_outputs_match_only_with_the_same_members() {
    let want = serde_json::json!({"valid": true, "claims": {"jti": "..."}});
    assert!(
        json_matches(
            &want,
            &serde_json::json!({"valid": true, "claims": {"jti": "x"}}),
            ""
        )
        .is_ok()
    );
    assert!(json_matches(&want, &serde_json::json!({"valid": true}), "").is_err());
    assert!(
        json_matches(
            &want,
            &serde_json::json!({"valid": false, "claims": {"jti": "x"}}),
            ""
        )
        .is_err()
    );
    assert!(
        json_matches(
            &want,
            &serde_json::json!({"valid": true, "reason": "X", "claims": {"jti": "x"}}),
            ""
        )
        .is_err()
    );
}
