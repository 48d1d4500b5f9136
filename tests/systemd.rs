//! The service packaging: the systemd units pass `systemd-analyze verify` and
//! rate 2.0 or lower in `systemd-analyze security`, `packaging/install.sh`
//! lays out a tree that works, the shipped service config loads, and the
//! files that name each other (unit, config, install script, `cargo deb`
//! metadata) agree.
//!
//! The systemd-analyze checks are skipped, with the reason printed, on hosts
//! without it. Nothing here touches the network or the host's systemd.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The most `systemd-analyze security` may rate the unit (0 is best, 10 worst).
const MAX_EXPOSURE: f64 = 2.0;

/// Every command here finishes in well under a second; this only stops a
/// stuck one from hanging the suite.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn hookrelay_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hookrelay"))
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Runs `cmd` to completion within COMMAND_TIMEOUT, capturing its output.
fn run(cmd: &mut Command) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still running after {COMMAND_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `systemd-analyze`, or None (with the reason printed) when it cannot run here.
fn systemd_analyze() -> Option<Command> {
    match Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(status) if status.success() => {
            let mut cmd = Command::new("systemd-analyze");
            cmd.env("SYSTEMD_COLORS", "0")
                .env("SYSTEMD_PAGER", "cat")
                .arg("--no-pager");
            Some(cmd)
        }
        Ok(status) => {
            eprintln!("skipping: `systemd-analyze --version` failed ({status})");
            None
        }
        Err(e) => {
            eprintln!("skipping: systemd-analyze is not available ({e})");
            None
        }
    }
}

/// The units in a temp dir, as `verify` can check them: ExecStart names the
/// binary this build made, since /usr/bin/hookrelay need not exist here.
/// With `lowport`, the low-port drop-in is applied too.
fn staged_units(lowport: bool) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("hookrelay-units")
        .tempdir()
        .expect("temp dir");
    let unit = read(&repo().join("systemd/hookrelay.service"));
    let exec = "ExecStart=/usr/bin/hookrelay ";
    assert_eq!(
        unit.lines().filter(|l| l.starts_with(exec)).count(),
        1,
        "hookrelay.service should have one `{exec}…` line"
    );
    let unit = unit.replace(exec, &format!("ExecStart={} ", hookrelay_bin().display()));
    fs::write(dir.path().join("hookrelay.service"), unit).expect("write unit");
    fs::copy(
        repo().join("systemd/hookrelay.socket"),
        dir.path().join("hookrelay.socket"),
    )
    .expect("copy socket unit");
    // Documentation=man:hookrelay(1) is looked up with man(1): the page the
    // package installs, found here through MANPATH (see assert_verifies).
    let man1 = dir.path().join("man/man1");
    fs::create_dir_all(&man1).expect("man dir");
    fs::copy(
        repo().join("packaging/man/hookrelay.1"),
        man1.join("hookrelay.1"),
    )
    .expect("copy the man page");
    if lowport {
        let dropins = dir.path().join("hookrelay.service.d");
        fs::create_dir(&dropins).expect("drop-in dir");
        fs::copy(
            repo().join("systemd/hookrelay-lowport.conf"),
            dropins.join("lowport.conf"),
        )
        .expect("copy drop-in");
    }
    dir
}

/// Runs `verify` on the staged units and fails on any complaint about them.
/// Lines about the host's own units are printed, not held against ours.
fn assert_verifies(units: &Path) {
    let Some(mut cmd) = systemd_analyze() else {
        return;
    };
    let out = run(cmd
        .env("MANPATH", units.join("man"))
        .arg("verify")
        .arg(units.join("hookrelay.service"))
        .arg(units.join("hookrelay.socket")));
    let output = format!("{}{}", text(&out.stdout), text(&out.stderr));
    let ours: Vec<&str> = output.lines().filter(|l| l.contains("hookrelay")).collect();
    let host: Vec<&str> = output
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("hookrelay"))
        .collect();
    if !host.is_empty() {
        eprintln!(
            "systemd-analyze verify, about the host's units:\n{}",
            host.join("\n")
        );
    }
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify ({}):\n{output}",
        out.status
    );
}

/// The overall exposure `systemd-analyze security --offline=true` gives the
/// unit file, with its full report for failure messages.
fn exposure(unit: &Path) -> Option<(f64, String)> {
    let mut cmd = systemd_analyze()?;
    let out = run(cmd.arg("security").arg("--offline=true").arg(unit));
    let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "systemd-analyze security ({}):\n{report}",
        out.status
    );
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level for hookrelay.service:"))
        .unwrap_or_else(|| panic!("no overall exposure line in:\n{report}"));
    let score = line
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("cannot read a score from {line:?}"));
    Some((score, report))
}

fn check_config(config: &Path) -> Output {
    run(Command::new(hookrelay_bin())
        .arg("check-config")
        .arg("--config")
        .arg(config)
        .env_remove("HOOKRELAY_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY"))
}

fn assert_config_ok(config: &Path) -> String {
    let out = check_config(config);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "check-config {} ({}):\n{said}",
        config.display(),
        out.status
    );
    said
}

/// The unit's value for `key` (the last one, as systemd reads it).
fn directive<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .next_back()
        .unwrap_or_else(|| panic!("the unit has no {key}="))
        .trim()
}

fn packaged_config() -> toml::Table {
    read(&repo().join("packaging/hookrelay.toml"))
        .parse()
        .expect("packaging/hookrelay.toml is TOML")
}

/// packaging/hookrelay.toml with its commented example route switched on.
fn config_with_example_route() -> String {
    let mut inside = false;
    let mut out = String::new();
    for line in read(&repo().join("packaging/hookrelay.toml")).lines() {
        match line {
            "# --- example route ---" => inside = true,
            "# --- end of example route ---" => inside = false,
            _ => {}
        }
        let code = line
            .strip_prefix('#')
            .filter(|rest| inside && !rest.is_empty() && !rest.starts_with(' '));
        out.push_str(code.unwrap_or(line));
        out.push('\n');
    }
    out
}

fn install(destdir: &Path, prefix: &str) -> Output {
    let out = run(Command::new("sh")
        .arg(repo().join("packaging/install.sh"))
        .arg("--no-build")
        .arg("--bin")
        .arg(hookrelay_bin())
        .env("DESTDIR", destdir)
        .env("PREFIX", prefix)
        .env_remove("UNITDIR")
        .env_remove("SYSCONFDIR")
        .env_remove("HOOKRELAY_BIN"));
    assert!(
        out.status.success(),
        "install.sh ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

// === systemd-analyze ===

#[test]
fn units_pass_systemd_analyze_verify() {
    let units = staged_units(false);
    assert_verifies(units.path());
}

#[test]
fn service_exposure_is_at_most_two() {
    let Some((score, report)) = exposure(&repo().join("systemd/hookrelay.service")) else {
        return;
    };
    assert!(
        score <= MAX_EXPOSURE,
        "exposure {score} > {MAX_EXPOSURE}:\n{report}"
    );
}

#[test]
fn lowport_dropin_verifies_and_grants_only_bind_service() {
    let units = staged_units(true);
    assert_verifies(units.path());
    let Some((score, report)) = exposure(&units.path().join("hookrelay.service")) else {
        return;
    };
    // Proof that the drop-in was read: the capability now shows as granted.
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("✗ CapabilityBoundingSet=~CAP_NET_(BIND_SERVICE")),
        "the drop-in did not grant CAP_NET_BIND_SERVICE:\n{report}"
    );
    for cap in ["CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SETUID", "CAP_DAC_"] {
        assert!(
            !report
                .lines()
                .any(|l| l.starts_with("✗ CapabilityBoundingSet=~") && l.contains(cap)),
            "the drop-in grants more than CAP_NET_BIND_SERVICE ({cap}):\n{report}"
        );
    }
    assert!(
        score <= MAX_EXPOSURE,
        "exposure with the drop-in {score} > {MAX_EXPOSURE}:\n{report}"
    );
}

// === the files agree with each other ===

#[test]
fn unit_config_and_socket_agree() {
    let unit = read(&repo().join("systemd/hookrelay.service"));
    let socket = read(&repo().join("systemd/hookrelay.socket"));
    let config = packaged_config();

    assert_eq!(directive(&unit, "Type"), "notify");
    assert_eq!(
        directive(&unit, "ExecStart"),
        "/usr/bin/hookrelay serve --config /etc/hookrelay/hookrelay.toml"
    );
    assert_eq!(directive(&unit, "ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(directive(&unit, "DynamicUser"), "yes");
    assert_eq!(directive(&unit, "CapabilityBoundingSet"), "");
    assert_eq!(directive(&unit, "AmbientCapabilities"), "");

    // The store lives in the unit's StateDirectory.
    let state = directive(&unit, "StateDirectory");
    assert_eq!(
        config["store"]["path"].as_str(),
        Some(format!("/var/lib/{state}").as_str()),
        "store.path should be the unit's StateDirectory"
    );

    // The admin tokens come in as the credential the config names.
    let tokens_file = config["admin"]["tokens_file"]
        .as_str()
        .expect("admin.tokens_file");
    assert_eq!(
        directive(&unit, "LoadCredential"),
        format!("{tokens_file}:/etc/hookrelay/{tokens_file}"),
        "LoadCredential= should supply admin.tokens_file"
    );

    // Stopping waits out delivery.shutdown_grace before systemd kills.
    let grace = config["delivery"]["shutdown_grace"]
        .as_str()
        .expect("delivery.shutdown_grace");
    let grace = humantime::parse_duration(grace).expect("shutdown_grace duration");
    let stop =
        humantime::parse_duration(directive(&unit, "TimeoutStopSec")).expect("TimeoutStopSec");
    assert!(
        stop > grace,
        "TimeoutStopSec {stop:?} should exceed shutdown_grace {grace:?}"
    );

    // The socket takes over exactly the address the config would bind.
    let listen = config["ingest"]["listen"]
        .as_array()
        .expect("ingest.listen");
    assert_eq!(listen.len(), 1);
    assert_eq!(Some(directive(&socket, "ListenStream")), listen[0].as_str());
    assert_eq!(directive(&socket, "Service"), "hookrelay.service");
}

#[test]
fn unit_caps_memory_and_tasks_and_denies_link_local_but_not_the_lms() {
    let unit = read(&repo().join("systemd/hookrelay.service"));
    let memory = directive(&unit, "MemoryMax");
    let gib = memory
        .strip_suffix('G')
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("MemoryMax={memory} should be in G"));
    assert!((1..=64).contains(&gib), "MemoryMax={memory}");
    let tasks: u32 = directive(&unit, "TasksMax").parse().expect("TasksMax=N");
    assert!((64..=4096).contains(&tasks), "TasksMax={tasks}");

    let denied: Vec<ipnet::IpNet> = directive(&unit, "IPAddressDeny")
        .split_whitespace()
        .map(|n| {
            n.parse()
                .unwrap_or_else(|_| panic!("IPAddressDeny entry {n}"))
        })
        .collect();
    let is_denied = |ip: &str| {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        denied.iter().any(|n| n.contains(&ip))
    };
    for ip in ["169.254.169.254", "169.254.0.1", "fe80::1", "fd00:ec2::254"] {
        assert!(is_denied(ip), "{ip} should be denied: {denied:?}");
    }
    // Loopback (the LMS on the same host), private networks and the
    // internet, where an LMS or a receiver may be.
    for ip in [
        "127.0.0.1",
        "127.0.0.53",
        "::1",
        "10.0.0.5",
        "172.16.0.5",
        "192.168.1.10",
        "100.64.0.1",
        "fd12:3456::1",
        "203.0.113.7",
        "2001:db8::1",
    ] {
        assert!(!is_denied(ip), "{ip} must stay reachable: {denied:?}");
    }
    assert!(
        !unit.lines().any(|l| l.starts_with("IPAddressAllow=")),
        "IPAddressAllow= would override the deny list"
    );
}

#[test]
fn cargo_deb_metadata_matches_the_tree() {
    let manifest: toml::Table = read(&repo().join("Cargo.toml"))
        .parse()
        .expect("Cargo.toml");
    let deb = manifest["package"]["metadata"]["deb"]
        .as_table()
        .expect("[package.metadata.deb]");

    let assets = deb["assets"].as_array().expect("deb assets");
    let mut targets = Vec::new();
    for asset in assets {
        let asset = asset.as_array().expect("asset is [source, target, mode]");
        let [source, target, mode] = &asset[..] else {
            panic!("asset {asset:?} should be [source, target, mode]");
        };
        let (source, target, mode) = (
            source.as_str().expect("asset source"),
            target.as_str().expect("asset target"),
            mode.as_str().expect("asset mode"),
        );
        if let Some(ext) = source.strip_prefix("packaging/man/*.") {
            // The man pages, a glob cargo-deb expands.
            let pages = std::fs::read_dir(repo().join("packaging/man"))
                .expect("packaging/man")
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == ext))
                .count();
            assert!(pages > 0, "no {source}");
            assert_eq!(target, "usr/share/man/man1/");
            continue;
        }
        if !source.starts_with("target/") {
            assert!(
                repo().join(source).is_file(),
                "deb asset {source} is missing"
            );
        }
        let target = if target.ends_with('/') {
            format!(
                "/{target}{}",
                Path::new(source).file_name().unwrap().to_string_lossy()
            )
        } else {
            format!("/{target}")
        };
        targets.push((target, mode.to_string()));
    }
    let mode_of = |path: &str| {
        targets
            .iter()
            .find(|(t, _)| t == path)
            .map(|(_, m)| m.as_str())
            .unwrap_or_else(|| panic!("no deb asset installs {path}"))
    };
    assert_eq!(mode_of("/usr/bin/hookrelay"), "755");
    assert_eq!(mode_of("/etc/hookrelay/hookrelay.toml"), "644");
    assert_eq!(mode_of("/etc/hookrelay/admin.tokens"), "600");

    let conf_files: Vec<&str> = deb["conf-files"]
        .as_array()
        .expect("deb conf-files")
        .iter()
        .map(|v| v.as_str().expect("conf-file path"))
        .collect();
    assert_eq!(
        conf_files,
        [
            "/etc/hookrelay/hookrelay.toml",
            "/etc/hookrelay/admin.tokens"
        ]
    );

    let units = deb["systemd-units"]["unit-scripts"]
        .as_str()
        .expect("systemd-units.unit-scripts");
    for unit in ["hookrelay.service", "hookrelay.socket"] {
        assert!(
            repo().join(units).join(unit).is_file(),
            "{units}{unit} is missing"
        );
    }
    // cargo-deb splices its systemd fragments in at #DEBHELPER#.
    let scripts = repo().join(
        deb["maintainer-scripts"]
            .as_str()
            .expect("maintainer-scripts"),
    );
    for script in ["preinst", "postinst", "prerm", "postrm"] {
        let path = scripts.join(script);
        if path.exists() {
            assert!(
                read(&path).contains("#DEBHELPER#"),
                "{} lacks #DEBHELPER#",
                path.display()
            );
        }
    }
}

// === the shipped config ===

#[test]
fn packaged_config_passes_check_config() {
    let said = assert_config_ok(&repo().join("packaging/hookrelay.toml"));
    assert!(
        said.contains("/var/lib/hookrelay"),
        "check-config said:\n{said}"
    );
}

#[test]
fn packaged_example_route_passes_check_config_when_uncommented() {
    let config = config_with_example_route();
    assert_ne!(
        config,
        read(&repo().join("packaging/hookrelay.toml")),
        "packaging/hookrelay.toml has no commented example route"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("hookrelay.toml");
    fs::write(&path, config).expect("write config");
    let said = assert_config_ok(&path);
    assert!(said.contains("route heights"), "check-config said:\n{said}");
    assert!(said.contains("target crm"), "check-config said:\n{said}");
}

// === install.sh ===

#[test]
fn install_sh_lays_out_a_working_tree() {
    let dest = tempfile::tempdir().expect("temp dir");
    let root = dest.path();
    let out = install(root, "/usr");
    let said = text(&out.stdout);
    assert!(
        said.contains("systemctl daemon-reload")
            && said.contains("systemctl enable --now hookrelay"),
        "install.sh should print the next steps:\n{said}"
    );

    let bin = root.join("usr/bin/hookrelay");
    assert_eq!(mode(&bin), 0o755, "binary mode");
    assert_eq!(
        fs::read(&bin).expect("installed binary"),
        fs::read(hookrelay_bin()).expect("built binary"),
        "the installed binary is the one given with --bin"
    );

    let units = root.join("usr/lib/systemd/system");
    for unit in ["hookrelay.service", "hookrelay.socket"] {
        let path = units.join(unit);
        assert_eq!(mode(&path), 0o644, "{unit} mode");
        assert_eq!(
            read(&path),
            read(&repo().join("systemd").join(unit)),
            "{unit} content"
        );
    }
    assert!(root
        .join("usr/share/doc/hookrelay/hookrelay-lowport.conf")
        .is_file());
    assert!(root.join("usr/share/doc/hookrelay/SERVICE.md").is_file());
    // The unit's Documentation=man:hookrelay(1), and one page a command.
    for page in [
        "hookrelay.1",
        "hookrelay-serve.1",
        "hookrelay-check-config.1",
    ] {
        let path = root.join("usr/share/man/man1").join(page);
        assert_eq!(mode(&path), 0o644, "{page}");
    }

    let config = root.join("etc/hookrelay/hookrelay.toml");
    assert_eq!(mode(&config), 0o644, "config mode");
    assert_eq!(
        read(&config),
        read(&repo().join("packaging/hookrelay.toml"))
    );
    let tokens = root.join("etc/hookrelay/admin.tokens");
    assert_eq!(mode(&tokens), 0o600, "admin.tokens mode");
    assert!(
        read(&tokens)
            .lines()
            .all(|l| l.trim().is_empty() || l.starts_with('#')),
        "admin.tokens should ship without tokens"
    );

    // The installed binary accepts the installed config.
    let out = run(Command::new(&bin)
        .arg("check-config")
        .arg("--config")
        .arg(&config)
        .env_remove("HOOKRELAY_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY"));
    assert!(
        out.status.success(),
        "installed check-config ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );

    // A second install keeps the operator's config and tokens.
    fs::write(&config, "# edited by the operator\n").expect("edit config");
    fs::write(&tokens, "operator-token\n").expect("edit tokens");
    install(root, "/usr");
    assert_eq!(read(&config), "# edited by the operator\n");
    assert_eq!(read(&tokens), "operator-token\n");
    assert_eq!(mode(&tokens), 0o600, "admin.tokens mode after reinstall");
    assert_eq!(
        read(&root.join("etc/hookrelay/hookrelay.toml.new")),
        read(&repo().join("packaging/hookrelay.toml"))
    );
}

#[test]
fn install_sh_prefix_moves_the_binary_and_the_unit_follows() {
    let dest = tempfile::tempdir().expect("temp dir");
    let root = dest.path();
    install(root, "/usr/local");
    assert_eq!(mode(&root.join("usr/local/bin/hookrelay")), 0o755);
    let unit = read(&root.join("usr/local/lib/systemd/system/hookrelay.service"));
    assert_eq!(
        directive(&unit, "ExecStart"),
        "/usr/local/bin/hookrelay serve --config /etc/hookrelay/hookrelay.toml"
    );
    // Configuration stays in /etc whatever the prefix.
    assert!(root.join("etc/hookrelay/hookrelay.toml").is_file());
    assert!(!root.join("usr/bin/hookrelay").exists());
}

#[test]
fn install_sh_refuses_a_missing_binary() {
    let dest = tempfile::tempdir().expect("temp dir");
    let out = run(Command::new("sh")
        .arg(repo().join("packaging/install.sh"))
        .arg("--no-build")
        .arg("--bin")
        .arg(dest.path().join("no-such-binary"))
        .env("DESTDIR", dest.path())
        .env_remove("HOOKRELAY_BIN"));
    assert!(
        !out.status.success(),
        "install.sh accepted a missing binary"
    );
    assert!(
        fs::read_dir(dest.path())
            .expect("read dest")
            .next()
            .is_none(),
        "install.sh wrote files before failing"
    );
}
