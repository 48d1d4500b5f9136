//! Loading the file: defaults, errors, cross-field rules, resolved values.

use std::collections::HashMap;
use std::time::Duration;

use super::*;
use crate::deliver::policy::{Backoff, SuccessRanges};
use crate::deliver::shape::Body;
use crate::deliver::sign::Secret;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"))
}

#[test]
fn empty_file_is_the_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.ingest.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
    assert_eq!(c.delivery.max_attempts, 10);
    assert!(c.delivery.success.contains(204));
    assert!(!c.delivery.success.contains(302));
}

#[test]
fn errors_name_file_key_and_reason() {
    let e = parse("[delivery]\ntimeout = \"soon\"\n").unwrap_err();
    assert_eq!(e.file, "test.toml");
    assert_eq!(e.key, "delivery.timeout");
    assert!(!e.reason.is_empty());

    let e = parse("[ingest]\nallow = [\"10.0.0.300/8\"]\n").unwrap_err();
    assert_eq!(e.key, "ingest.allow[0]");

    // Found by fuzzing: an empty table name left the key empty.
    let e = parse("['']").unwrap_err();
    assert_eq!(e.key, "(top level)");

    let e = parse("[store]\npaht = \"x\"\n").unwrap_err();
    assert!(e.reason.contains("unknown field"), "{e}");

    let e = parse(
        "[[routes]]\nname = \"r\"\npath = \"/a\"\n[[routes.targets]]\nname = \"t\"\nurl = \"ftp://x\"\n",
    )
    .unwrap_err();
    assert_eq!(e.key, "routes[0].targets[0].url");
    assert!(e.reason.contains("http or https"), "{e}");
}

#[test]
fn cross_field_rules() {
    let e =
        parse("[[routes]]\nname = \"r\"\npath = \"/a\"\nevent = \"{path.event}\"\n").unwrap_err();
    assert_eq!(e.key, "routes[0].event");

    let e = parse("[delivery]\nbackoff = { initial = \"2s\", max = \"1s\" }\n").unwrap_err();
    assert_eq!(e.key, "delivery.backoff.max");

    let e = parse(
        "[[routes]]\nname = \"r\"\npath = \"/a\"\n[[routes.targets]]\nname = \"t\"\nurl = \"http://x\"\nsuccess = [\"299-200\"]\n",
    )
    .unwrap_err();
    assert_eq!(e.key, "routes[0].targets[0].success");
}

#[test]
fn success_ranges() {
    let r = SuccessRanges(vec![
        SuccessRanges::parse_one("200-308").unwrap(),
        SuccessRanges::parse_one("410").unwrap(),
    ]);
    assert!(r.contains(200) && r.contains(308) && r.contains(410));
    assert!(!r.contains(309) && !r.contains(199));
    assert!(SuccessRanges::parse_one("2xx").is_err());
    assert!(SuccessRanges::parse_one("99").is_err());
}

#[test]
fn backoff_grows_to_max() {
    let b = Backoff {
        initial: Duration::from_secs(20),
        max: Duration::from_secs(3600),
        multiplier: 2.0,
        jitter: 0.2,
    };
    assert_eq!(b.delay(1), Duration::from_secs(20));
    assert_eq!(b.delay(2), Duration::from_secs(40));
    assert_eq!(b.delay(8), Duration::from_secs(2560));
    assert_eq!(b.delay(9), Duration::from_secs(3600));
    assert_eq!(b.delay(u32::MAX), Duration::from_secs(3600));
    assert_eq!(b.jittered(2, 0.0), Duration::from_secs(32));
    assert_eq!(b.jittered(2, 0.5), Duration::from_secs(40));
}

fn target(extra: &str) -> String {
    format!("[[routes]]\nname = \"r\"\npath = \"/a\"\n[[routes.targets]]\nname = \"t\"\nurl = \"http://x\"\n{extra}\n")
}

fn parse_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::parse_with(text, Path::new("test.toml"), &env)
}

#[test]
fn target_headers_and_basic_auth_resolve_and_stay_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key");
    std::fs::write(&file, "file-secret\n").unwrap();
    let text = target(&format!(
        "basic_auth = {{ username = \"relay\", password = \"env:PW\" }}\n\
         headers = {{ X-Api-Key = \"env:API_KEY\", x-from-file = \"file:{}\", x-plain = \"plain-value\" }}",
        file.display()
    ));
    let c = parse_env(&text, &[("PW", "pw-secret"), ("API_KEY", "key-secret")]).unwrap();
    let t = &c.routes[0].targets[0];
    let h: Vec<(&str, &[u8])> = t
        .outbound
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    assert_eq!(
        h,
        vec![
            ("authorization", &b"Basic cmVsYXk6cHctc2VjcmV0"[..]),
            ("x-api-key", b"key-secret"),
            ("x-from-file", b"file-secret"),
            ("x-plain", b"plain-value"),
        ]
    );
    let debug = format!("{c:?}");
    for secret in [
        "pw-secret",
        "key-secret",
        "file-secret",
        "plain-value",
        "cmVsYXk6cHctc2VjcmV0",
    ] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }
    assert!(debug.contains("env:API_KEY"), "{debug}");

    let e = parse_env(&text, &[("PW", "pw-secret")]).unwrap_err();
    assert_eq!(e.key, "routes[0].targets[0].headers.X-Api-Key");
    assert!(e.reason.contains("API_KEY is not set"), "{e}");
    let e = parse_env(
        &text.replace("/key", "/nope"),
        &[("PW", "p"), ("API_KEY", "k")],
    )
    .unwrap_err();
    assert_eq!(e.key, "routes[0].targets[0].headers.x-from-file");
    let e = parse_env(&text, &[("PW", "p"), ("API_KEY", "line\nbreak")]).unwrap_err();
    assert!(!e.to_string().contains("break"), "{e}");
}

#[test]
fn reserved_and_conflicting_headers_are_refused() {
    for name in [
        "webhook-id",
        "Webhook-Signature",
        "content-length",
        "host",
        "content-type",
        "user-agent",
        "transfer-encoding",
    ] {
        let e = parse(&target(&format!("headers = {{ {name} = \"x\" }}"))).unwrap_err();
        assert_eq!(e.key, format!("routes[0].targets[0].headers.{name}"));
        assert!(e.reason.contains("cannot be set"), "{e}");
    }
    let e = parse(&target(
        "basic_auth = { username = \"u\", password = \"p\" }\nheaders = { authorization = \"Bearer x\" }",
    ))
    .unwrap_err();
    assert!(
        e.reason.contains("basic_auth already sets authorization"),
        "{e}"
    );
    assert!(parse(&target("headers = { authorization = \"Bearer x\" }")).is_ok());
    let e = parse(&target("headers = { x-a = \"env:\" }")).unwrap_err();
    assert_eq!(e.key, "routes[0].targets[0].headers.x-a");
}

#[test]
fn shaping_keys_are_checked_at_load() {
    let c = parse(&target("format = \"xml\"\nxml_root = \"order\"")).unwrap();
    assert!(
        matches!(&c.routes[0].targets[0].outbound.shape.body, Body::Xml(r) if r.as_str() == "order")
    );
    let bad = [
        ("format = \"yaml\"", "format"),
        ("xml_root = \"order\"", "xml_root"),
        ("format = \"xml\"\nxml_root = \"1x\"", "xml_root"),
        ("format = \"xml\"\ntemplate = \"{}\"", "template"),
        ("template = \"{{ payload.x \"", "template"),
        ("template = \"{{ paylaod.x }}\"", "template"),
        (
            "template = \"x\"\ntemplate_file = \"t.j2\"",
            "template_file",
        ),
        ("template_file = \"/nonexistent/t.j2\"", "template_file"),
        ("content_type = \"json\"", "content_type"),
        ("filter = { json = \"/a\" }", "filter"),
    ];
    for (extra, key) in bad {
        let e = parse(&target(extra)).unwrap_err();
        assert_eq!(e.key, format!("routes[0].targets[0].{key}"), "{extra}: {e}");
    }
    let c = parse(&target(
        "template = \"{{ payload | tojson }}\"\ncontent_type = \"application/vnd.x+json\"",
    ))
    .unwrap();
    assert!(matches!(
        c.routes[0].targets[0].outbound.shape.body,
        Body::Template(_)
    ));
}

#[test]
fn secrets_come_from_the_file_the_environment_or_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n").unwrap();
    let text = format!(
        "[[routes]]\nname = \"r\"\npath = \"/r\"\n[[routes.targets]]\nname = \"t\"\n\
         url = \"https://crm.example.com/\"\n\
         secret = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\", \"env:HOOK_KEY\", \"file:{}\"]\n",
        key_file.display()
    );
    let env: HashMap<String, String> = [(
        "HOOK_KEY".to_string(),
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string(),
    )]
    .into();
    let c = Config::parse_with(&text, Path::new("test.toml"), &env).unwrap();
    let secrets = &c.routes[0].targets[0].secret.0;
    assert_eq!(secrets.len(), 3);
    assert_eq!(secrets[0], secrets[1]);
    assert_eq!(
        secrets[2],
        Secret::parse("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap()
    );

    let e = Config::parse_with(&text, Path::new("test.toml"), &HashMap::new()).unwrap_err();
    assert_eq!(e.key, "routes[0].targets[0].secret");
    assert!(e.reason.contains("HOOK_KEY"), "{e}");
    let bad: HashMap<String, String> = [("HOOK_KEY".to_string(), "hunter2".to_string())].into();
    let e = Config::parse_with(&text, Path::new("test.toml"), &bad).unwrap_err();
    assert!(
        e.reason.contains("env:HOOK_KEY") && !e.reason.contains("hunter2"),
        "{e}"
    );
}

#[test]
fn shipped_config_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/hookrelay.toml");
    let c = Config::load(&path).unwrap();
    assert!(!c.routes.is_empty());
}

#[test]
fn errors_never_print_a_value() {
    // A wrong type on a secret-bearing key: the kind is said, not the value.
    for (text, key) in [
        (
            target("secret = 98765432109"),
            "routes[0].targets[0].secret",
        ),
        (
            target("headers = { x-api-key = 98765432109 }"),
            "routes[0].targets[0].headers.x-api-key",
        ),
        (
            target("basic_auth = { username = \"u\", password = 98765432109 }"),
            "routes[0].targets[0].basic_auth.password",
        ),
        (
            "[delivery]\nmax_attempts = \"98765432109\"\n".to_string(),
            "delivery.max_attempts",
        ),
    ] {
        let e = parse(&text).unwrap_err();
        let shown = e.to_string();
        assert!(!shown.contains("98765432109"), "{shown}");
        assert_eq!(e.key, key, "{shown}");
        assert!(shown.starts_with("test.toml: "), "{shown}");
        assert!(
            shown.contains("invalid type") || shown.contains("expected a text"),
            "{shown}"
        );
        assert!(shown.contains("line "), "{shown}");
    }

    // A syntax error on a secret's line names its place, not the line.
    let text = target("secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\" trailing");
    let e = parse(&text).unwrap_err();
    let shown = e.to_string();
    assert!(!shown.contains("MfKQ9r8G"), "{shown}");
    assert!(!shown.contains("trailing"), "{shown}");
    let line = text.lines().position(|l| l.contains("trailing")).unwrap() + 1;
    assert!(shown.contains(&format!("line {line}, column ")), "{shown}");

    // A custom error that quotes what was written has it replaced.
    let e = parse(&target("events = [\"sec*ret-token\"]")).unwrap_err();
    assert!(!e.to_string().contains("ret-token"), "{e}");
    assert!(e.to_string().contains("(the value)"), "{e}");

    // A key's own name is not a value.
    let e = parse("[store]\npaht = \"x\"\n").unwrap_err();
    assert!(e.reason.starts_with("unknown field `paht`"), "{e}");
}

#[test]
fn placeholders_and_the_example_secret_are_warned_about() {
    let c = parse(&target(
        "secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n\
         headers = { x-api-key = \"change-me\", x-other = \"real\" }\n\
         basic_auth = { username = \"u\", password = \"Bearer change-me\" }",
    ))
    .unwrap();
    let w = c.warnings();
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(w[0].starts_with("routes[0].targets[0].secret: the example secret"));
    assert!(w[1].starts_with("routes[0].targets[0].headers.x-api-key: "));
    assert!(w[2].starts_with("routes[0].targets[0].basic_auth.password: "));

    let own = "[[routes]]\nname = \"r\"\npath = \"/r\"\n[[routes.targets]]\nname = \"t\"\n\
               url = \"https://crm.example.com/h\"\nsecret = \"whsec_dGhpcyBpcyBhIHJlYWwgc2VjcmV0ISEh\"\n";
    assert_eq!(parse(own).unwrap().warnings(), Vec::<String>::new());
}

#[test]
fn a_postgres_store_reads_its_url_from_the_environment_or_a_file_and_never_shows_it() {
    let text =
        "[store]\nbackend = \"postgres\"\n[store.postgres]\nurl = \"env:HOOKRELAY_PG_URL\"\n";
    let url = "postgres://relay:s3cret-pw@db.internal:5433/lms";
    let c = parse_env(text, &[("HOOKRELAY_PG_URL", url)]).unwrap();
    assert_eq!(c.store.backend, crate::store::Backend::Postgres);
    assert_eq!(c.store.postgres.url, url);
    assert_eq!(
        c.store.location(),
        "postgres://db.internal:5433/lms (schema hookrelay)"
    );
    let debug = format!("{c:?}");
    assert!(!debug.contains("s3cret-pw"), "{debug}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pg-url");
    std::fs::write(&file, format!("{url}\n")).unwrap();
    let c = parse(&format!(
        "store.backend = \"postgres\"\nstore.postgres.url = \"file:{}\"\n",
        file.display()
    ))
    .unwrap();
    assert_eq!(c.store.postgres.url, url, "read, trailing newline trimmed");

    // Unset, missing or malformed: the key and why, never the value.
    let e = parse_env(text, &[]).unwrap_err();
    assert_eq!(e.key, "store.postgres.url");
    assert!(e.reason.contains("HOOKRELAY_PG_URL"), "{e}");
    let e = parse("store.backend = \"postgres\"\n").unwrap_err();
    assert_eq!(e.key, "store.postgres.url");
    assert!(e.reason.contains("required"), "{e}");
    let e = parse_env(
        text,
        &[(
            "HOOKRELAY_PG_URL",
            "postgres://relay:s3cret-pw@db:notaport/x",
        )],
    )
    .unwrap_err();
    assert_eq!(e.key, "store.postgres.url");
    assert!(!e.reason.contains("s3cret-pw"), "{e}");
    // The sled store ignores the section.
    assert!(parse("[store.postgres]\nschema = \"x\"\n").is_ok());
}

#[test]
fn postgres_settings_are_checked_at_load() {
    let pg = |extra: &str| {
        parse(&format!(
            "store.backend = \"postgres\"\nstore.postgres.url = \"postgres://h/db\"\n{extra}"
        ))
    };
    let c = pg("").unwrap();
    assert_eq!(c.store.postgres.schema, "hookrelay");
    assert_eq!(c.store.postgres.lease, Duration::from_secs(60));
    for (extra, key) in [
        (
            "store.postgres.schema = \"Hook-Relay\"\n",
            "store.postgres.schema",
        ),
        ("store.postgres.schema = \"1x\"\n", "store.postgres.schema"),
        ("store.postgres.pool_size = 0\n", "store.postgres.pool_size"),
        (
            "store.postgres.poll_interval = \"1ms\"\n",
            "store.postgres.poll_interval",
        ),
        (
            "store.postgres.statement_timeout = \"0s\"\n",
            "store.postgres.statement_timeout",
        ),
        // Not longer than the delivery timeout (15 s) plus 5 s.
        ("store.postgres.lease = \"20s\"\n", "store.postgres.lease"),
        (
            "store.postgres.ca_file = \"/nonexistent/ca.pem\"\n",
            "store.postgres.ca_file",
        ),
    ] {
        let e = pg(extra).unwrap_err();
        assert_eq!(e.key, key, "{extra}: {e}");
    }
    // A target's own, longer timeout counts too.
    let e = pg(&format!(
        "store.postgres.lease = \"30s\"\n{}",
        target("timeout = \"40s\"")
    ))
    .unwrap_err();
    assert_eq!(e.key, "store.postgres.lease");
    assert!(e.reason.contains("40s"), "{e}");
    assert!(pg("store.postgres.lease = \"21s\"\n").is_ok());
}
