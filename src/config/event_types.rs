//! Event catalogs: the event types a route declares, for people and tools
//! that pick events (the admin API's `GET /api/event-types`, Send Test).
//!
//! A route declares its catalog inline (`event_types = [...]`) or in a file
//! (`event_types_file`, a TOML file with a top-level `[[event_types]]`
//! array). Either way the entries are resolved here, once, at config load:
//!
//! - a name is the event type exactly as the route's `event` template
//!   produces it (`new_order`, `virtual classroom.created`): non-empty, no
//!   control characters, no leading or trailing whitespace, unique within
//!   the catalog;
//! - `display_name` defaults to the name and is 1-100 characters without
//!   control characters;
//! - `example` is parsed into JSON: a TOML string is JSON text, any other
//!   TOML value (a table, usually) is converted, datetimes becoming RFC 3339
//!   strings. A broken example stops the load, so Send Test never finds one
//!   it cannot send;
//! - a catalog holds at most [`MAX_EVENT_TYPES`] entries.
//!
//! Errors are `(key, reason)` like the rest of `config`; the key names the
//! entry (`routes[0].event_types[3].example`), and for a file, the key inside
//! it and the file itself.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The most entries one catalog may hold: the admin API lists a route's
/// catalog in one answer.
pub const MAX_EVENT_TYPES: usize = 1000;

/// The longest `display_name`, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 100;

/// One `[[event_types]]` entry, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTypeConfig {
    /// The event type, as the route's `event` template produces it.
    pub name: String,
    /// A name for people; defaults to `name`.
    pub display_name: Option<String>,
    /// A group to list it under (`Sales`, `Courses`).
    pub category: Option<String>,
    pub description: Option<String>,
    /// A payload of this type: JSON text, or a TOML table.
    pub example: Option<toml::Value>,
}

/// A declared event type, checked and with its example parsed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventType {
    pub name: String,
    pub display_name: String,
    pub category: Option<String>,
    pub description: Option<String>,
    pub example: Option<serde_json::Value>,
}

/// A catalog file: nothing but the `[[event_types]]` array.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    event_types: Vec<EventTypeConfig>,
}

/// Checks `entries` and parses their examples. `at` is the key of the list
/// (`routes[0].event_types`); an error's key is `{at}[i].field`.
pub fn resolve(entries: &[EventTypeConfig], at: &str) -> Result<Vec<EventType>, (String, String)> {
    if entries.len() > MAX_EVENT_TYPES {
        return Err((
            at.to_string(),
            format!(
                "{} event types; a catalog holds at most {MAX_EVENT_TYPES}",
                entries.len()
            ),
        ));
    }
    let mut names = HashSet::new();
    let mut resolved = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("{at}[{i}]");
        let name = &entry.name;
        check_name(name).map_err(|r| (format!("{at}.name"), r))?;
        if !names.insert(name.as_str()) {
            return Err((
                format!("{at}.name"),
                format!("`{name}`: another event type of this catalog has this name"),
            ));
        }
        if let Some(display) = &entry.display_name {
            valid_display_name(display).map_err(|r| (format!("{at}.display_name"), r))?;
        }
        let example = entry
            .example
            .as_ref()
            .map(example_json)
            .transpose()
            .map_err(|r| (format!("{at}.example"), format!("`{name}`: {r}")))?;
        resolved.push(EventType {
            name: name.clone(),
            display_name: entry.display_name.clone().unwrap_or_else(|| name.clone()),
            category: entry.category.clone(),
            description: entry.description.clone(),
            example,
        });
    }
    Ok(resolved)
}

/// Reads and resolves the catalog file at `path`. `at` is the key that names
/// the file (`routes[0].event_types_file`); an error's key is `at` followed
/// by the key inside the file, and its reason names the file.
pub fn load_file(path: &Path, at: &str) -> Result<Vec<EventType>, (String, String)> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| (at.to_string(), format!("cannot read {shown}: {e}")))?;
    let de = toml::Deserializer::new(&text);
    let file: CatalogFile = serde_path_to_error::deserialize(de).map_err(|e| {
        let inner_key = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.message().trim().to_string();
        let reason = match inner.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!("{message} ({shown}, line {line})")
            }
            None => format!("{message} ({shown})"),
        };
        // The root, or a key with an empty name, has no path of its own.
        let key = if inner_key == "." || inner_key.is_empty() {
            at.to_string()
        } else {
            format!("{at}.{inner_key}")
        };
        (key, reason)
    })?;
    resolve(&file.event_types, &format!("{at}.event_types"))
        .map_err(|(key, reason)| (key, format!("{reason} ({shown})")))
}

/// Whether `name` may be a display name (a target's, an endpoint's, an
/// event type's): 1-100 characters, no control characters, not blank.
pub fn valid_display_name(name: &str) -> Result<(), String> {
    let n = name.chars().count();
    if n == 0 || n > MAX_DISPLAY_NAME_CHARS {
        return Err(format!(
            "{n} characters; at least 1, at most {MAX_DISPLAY_NAME_CHARS}"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("may not contain control characters".into());
    }
    if name.trim().is_empty() {
        return Err("may not be blank".into());
    }
    Ok(())
}

/// Whether `event` may be named in `events`: no control characters, no
/// space at either end (inner spaces are fine: `virtual classroom.*`).
pub fn valid_event_name(event: &str) -> Result<(), String> {
    if event.chars().any(char::is_control) {
        return Err(format!(
            "`{}` contains control characters",
            event.escape_debug()
        ));
    }
    if event.trim() != event {
        return Err(format!(
            "`{event}` starts or ends with whitespace (an event type is matched exactly)"
        ));
    }
    if event.chars().count() > 200 {
        return Err("an event name is at most 200 characters".into());
    }
    Ok(())
}

/// An event type's name: not empty, and one an endpoint may name.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    valid_event_name(name)
}

/// An `example` as JSON: a string is JSON text, anything else is converted.
fn example_json(example: &toml::Value) -> Result<serde_json::Value, String> {
    match example {
        toml::Value::String(text) => {
            serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))
        }
        other => to_json(other),
    }
}

/// A TOML value as JSON. Datetimes become their RFC 3339 text; a float JSON
/// cannot hold (nan, inf) is an error.
fn to_json(value: &toml::Value) -> Result<serde_json::Value, String> {
    use serde_json::Value as Json;
    Ok(match value {
        toml::Value::String(s) => Json::String(s.clone()),
        toml::Value::Integer(i) => Json::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Json::Number)
            .ok_or_else(|| format!("{f} has no JSON form"))?,
        toml::Value::Boolean(b) => Json::Bool(*b),
        toml::Value::Datetime(d) => Json::String(d.to_string()),
        toml::Value::Array(items) => {
            Json::Array(items.iter().map(to_json).collect::<Result<_, _>>()?)
        }
        toml::Value::Table(table) => Json::Object(
            table
                .iter()
                .map(|(k, v)| Ok((k.clone(), to_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::PathBuf;

    use serde_json::{json, Value};

    use super::*;

    fn repo(path: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
    }

    fn catalog(file: &str) -> Vec<EventType> {
        let path = repo("config/examples/catalogs").join(file);
        load_file(&path, "catalog").unwrap_or_else(|(k, r)| panic!("{file}: {k}: {r}"))
    }

    fn by_name(types: &[EventType]) -> BTreeMap<&str, &EventType> {
        types.iter().map(|t| (t.name.as_str(), t)).collect()
    }

    /// The JSON fixtures of one platform under tests/fixtures, by file stem.
    fn fixtures(platform: &str) -> BTreeMap<String, Value> {
        let dir = repo("tests/fixtures").join(platform);
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| {
                let path = e.unwrap().path();
                let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
                let body = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                (stem, body)
            })
            .collect()
    }

    fn entries(toml_text: &str) -> Vec<EventTypeConfig> {
        #[derive(Deserialize)]
        struct List {
            types: Vec<EventTypeConfig>,
        }
        toml::from_str::<List>(toml_text).unwrap().types
    }

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("catalog.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    // === the shipped catalogs ===

    #[test]
    fn every_shipped_catalog_loads_with_examples_for_every_type() {
        let expected = BTreeMap::from([
            ("braincert.toml", 24),
            ("creator-platform.toml", 13),
            ("heights.toml", 6),
            ("live-events.toml", 1),
        ]);
        let mut found = BTreeMap::new();
        for entry in std::fs::read_dir(repo("config/examples/catalogs")).unwrap() {
            let file = entry.unwrap().file_name().to_string_lossy().into_owned();
            let types = catalog(&file);
            for t in &types {
                assert!(t.example.is_some(), "{file}: {} has no example", t.name);
                assert!(t.category.is_some(), "{file}: {} has no category", t.name);
                assert!(
                    t.description.is_some(),
                    "{file}: {} has no description",
                    t.name
                );
                assert_ne!(
                    t.display_name, t.name,
                    "{file}: {} has no display name",
                    t.name
                );
            }
            found.insert(file, types.len());
        }
        let expected: BTreeMap<String, usize> = expected
            .into_iter()
            .map(|(f, n)| (f.to_string(), n))
            .collect();
        assert_eq!(found, expected);
    }

    #[test]
    fn every_example_route_names_a_catalog_that_loads() {
        let dir = repo("config/examples");
        let mut routes = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let config: toml::Value = toml::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for route in config["routes"].as_array().unwrap() {
                let file = route["event_types_file"].as_str().unwrap_or_else(|| {
                    panic!("{}: a route has no event_types_file", path.display())
                });
                let types = load_file(&dir.join(file), "event_types_file")
                    .unwrap_or_else(|(k, r)| panic!("{}: {k}: {r}", path.display()));
                assert!(!types.is_empty());
                routes += 1;
            }
        }
        assert_eq!(routes, 4);
    }

    #[test]
    fn heights_examples_are_the_fixtures_named_by_their_path_segment() {
        let types = catalog("heights.toml");
        let names = by_name(&types);
        let fixtures = fixtures("heights");
        assert_eq!(types.len(), fixtures.len());
        for (stem, body) in &fixtures {
            let t = names
                .get(stem.as_str())
                .unwrap_or_else(|| panic!("no {stem}"));
            assert_eq!(t.example.as_ref(), Some(body), "{stem}");
        }
        assert_eq!(names["new_order"].display_name, "New Order");
        assert_eq!(names["new_order"].category.as_deref(), Some("Sales"));
    }

    #[test]
    fn braincert_examples_are_the_fixtures_named_by_resource_and_action() {
        let types = catalog("braincert.toml");
        let names = by_name(&types);
        let mut undeclared = BTreeSet::new();
        for (stem, body) in fixtures("braincert") {
            // The route's template: {json./resource}.{json./action}.
            let name = format!(
                "{}.{}",
                body["resource"].as_str().unwrap(),
                body["action"].as_str().unwrap()
            );
            match names.get(name.as_str()) {
                Some(t) => assert_eq!(t.example.as_ref(), Some(&body), "{stem}"),
                None => {
                    undeclared.insert(name);
                }
            }
        }
        assert!(
            undeclared.is_empty(),
            "fixtures with no catalog entry: {undeclared:?}"
        );
        assert_eq!(types.len(), 24);
        assert_eq!(names["user.signup"].display_name, "User Created");
        assert_eq!(names["purchase.completed"].display_name, "New Sale");
        assert_eq!(
            names["purchase.completed"].category.as_deref(),
            Some("Sales")
        );
        // The one topic without a fixture is built like its siblings.
        let updated = names["virtual classroom.updated"];
        assert_eq!(updated.display_name, "Live Class Updated");
        assert_eq!(
            updated.example.as_ref().unwrap()["resource"],
            "virtual classroom"
        );
        assert_eq!(updated.example.as_ref().unwrap()["action"], "updated");
        let categories: BTreeSet<_> = types.iter().filter_map(|t| t.category.as_deref()).collect();
        assert_eq!(
            categories,
            BTreeSet::from([
                "Course bundles",
                "Courses",
                "Groups",
                "Live classes",
                "Products",
                "Sales",
                "Tests",
                "Users"
            ])
        );
    }

    #[test]
    fn live_events_example_is_the_fixture_named_by_its_event_field() {
        let types = catalog("live-events.toml");
        let body = &fixtures("live-events")["courseComplete"];
        assert_eq!(types.len(), 1);
        assert_eq!(types[0].name, body["event"].as_str().unwrap());
        assert_eq!(types[0].name, "courseCompletion");
        assert_eq!(types[0].example.as_ref(), Some(body));
    }

    #[test]
    fn creator_platform_examples_carry_their_own_type() {
        let types = catalog("creator-platform.toml");
        assert_eq!(types.len(), 13);
        for t in &types {
            let example = t.example.as_ref().unwrap();
            assert_eq!(example["type"], t.name.as_str(), "{}", t.name);
            assert!(example["id"].as_str().unwrap().starts_with("evt_"));
            assert!(example["data"].is_object(), "{}", t.name);
        }
        let names = by_name(&types);
        assert_eq!(names["order.paid"].category.as_deref(), Some("Sales"));
        assert_eq!(names["customer.updated"].category.as_deref(), Some("CRM"));
        assert_eq!(
            names["certificate.earned"].category.as_deref(),
            Some("Education")
        );
    }

    // === resolve ===

    #[test]
    fn display_name_defaults_to_the_name_and_examples_become_json() {
        let types = resolve(
            &entries(
                r#"
                [[types]]
                name = "new_order"
                example = '{"id": "order_1", "amount": 49.99}'

                [[types]]
                name = "virtual classroom.created"
                display_name = "Live Class Created"
                example = { id = 7, at = 2024-03-01T15:00:00Z, tags = ["a", "b"], nested = { ok = true, text = "{not json}" } }
                "#,
            ),
            "routes[0].event_types",
        )
        .unwrap();
        assert_eq!(types[0].display_name, "new_order");
        assert_eq!(
            types[0].example,
            Some(json!({"id": "order_1", "amount": 49.99}))
        );
        assert_eq!(types[1].display_name, "Live Class Created");
        assert_eq!(
            types[1].example,
            Some(
                json!({"id": 7, "at": "2024-03-01T15:00:00Z", "tags": ["a", "b"],
                        "nested": {"ok": true, "text": "{not json}"}})
            )
        );
        assert_eq!(types[1].category, None);
    }

    #[test]
    fn an_example_that_is_not_json_names_its_entry() {
        let (key, reason) = resolve(
            &entries(
                r#"
                [[types]]
                name = "a"
                [[types]]
                name = "new_order"
                example = '{"id": 1,}'
                "#,
            ),
            "routes[2].event_types",
        )
        .unwrap_err();
        assert_eq!(key, "routes[2].event_types[1].example");
        assert!(
            reason.starts_with("`new_order`: not valid JSON"),
            "{reason}"
        );
    }

    #[test]
    fn names_must_be_present_exact_and_unique() {
        let cases = [
            ("", "must not be empty"),
            (" new_order", "whitespace"),
            ("new_order\n", "control characters"),
            ("new\u{7f}order", "control characters"),
        ];
        for (name, want) in cases {
            let e = [EventTypeConfig {
                name: name.into(),
                display_name: None,
                category: None,
                description: None,
                example: None,
            }];
            let (key, reason) = resolve(&e, "t").unwrap_err();
            assert_eq!(key, "t[0].name", "{name:?}");
            assert!(reason.contains(want), "{name:?}: {reason}");
        }
        let (key, reason) = resolve(
            &entries(
                "[[types]]\nname = \"a b\"\n[[types]]\nname = \"c\"\n[[types]]\nname = \"a b\"",
            ),
            "t",
        )
        .unwrap_err();
        assert_eq!(key, "t[2].name");
        assert!(
            reason.contains("`a b`") && reason.contains("another"),
            "{reason}"
        );
    }

    #[test]
    fn display_names_are_at_most_100_characters() {
        let entry = |display: String| EventTypeConfig {
            name: "x".into(),
            display_name: Some(display),
            category: None,
            description: None,
            example: None,
        };
        // Characters, not bytes: 100 of 'é' is 200 bytes.
        assert!(resolve(&[entry("é".repeat(100))], "t").is_ok());
        let (key, reason) = resolve(&[entry("é".repeat(101))], "t").unwrap_err();
        assert_eq!(key, "t[0].display_name");
        assert!(reason.contains("at most 100"), "{reason}");
        assert!(resolve(&[entry("  ".into())], "t").is_err());
        assert!(resolve(&[entry("New\tOrder".into())], "t").is_err());
    }

    #[test]
    fn a_catalog_is_bounded() {
        let many: Vec<_> = (0..=MAX_EVENT_TYPES)
            .map(|i| EventTypeConfig {
                name: format!("e{i}"),
                display_name: None,
                category: None,
                description: None,
                example: None,
            })
            .collect();
        let (key, _) = resolve(&many, "t").unwrap_err();
        assert_eq!(key, "t");
        assert!(resolve(&many[..MAX_EVENT_TYPES], "t").is_ok());
    }

    // === load_file ===

    #[test]
    fn file_errors_name_the_key_inside_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "[[event_types]]\nname = \"a\"\n\n[[event_types]]\nname = \"b\"\ncategori = \"Sales\"\n",
        );
        let (key, reason) = load_file(&path, "routes[1].event_types_file").unwrap_err();
        assert_eq!(key, "routes[1].event_types_file.event_types[1].categori");
        assert!(reason.contains("unknown field `categori`"), "{reason}");
        assert!(reason.contains(&path.display().to_string()), "{reason}");
        assert!(reason.contains("line 6"), "{reason}");

        let path = write(&dir, "[[event_types]]\nname = \"a\"\nexample = \"nope\"\n");
        let (key, reason) = load_file(&path, "routes[1].event_types_file").unwrap_err();
        assert_eq!(key, "routes[1].event_types_file.event_types[0].example");
        assert!(reason.starts_with("`a`: not valid JSON"), "{reason}");
        assert!(reason.contains(&path.display().to_string()), "{reason}");

        let path = write(&dir, "event_type = []\n");
        let (key, reason) = load_file(&path, "routes[1].event_types_file").unwrap_err();
        assert_eq!(key, "routes[1].event_types_file.event_type");
        assert!(reason.contains("unknown field"), "{reason}");

        let path = write(&dir, "# nothing yet\n");
        let (key, reason) = load_file(&path, "routes[1].event_types_file").unwrap_err();
        assert_eq!(key, "routes[1].event_types_file");
        assert!(reason.contains("missing field `event_types`"), "{reason}");

        let path = write(&dir, "[[event_types]\n");
        let (key, _) = load_file(&path, "routes[1].event_types_file").unwrap_err();
        assert_eq!(key, "routes[1].event_types_file");
    }

    #[test]
    fn an_empty_list_is_an_empty_catalog() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "event_types = []\n");
        assert_eq!(load_file(&path, "f").unwrap(), vec![]);
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let path = repo("config/examples/catalogs/no-such-platform.toml");
        let (key, reason) = load_file(&path, "routes[0].event_types_file").unwrap_err();
        assert_eq!(key, "routes[0].event_types_file");
        assert!(reason.starts_with("cannot read "), "{reason}");
        assert!(reason.contains("no-such-platform.toml"), "{reason}");
    }
}
