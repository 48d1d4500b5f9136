//! The egress guard: which addresses hookrelay may connect to, and the
//! one place where outbound sockets are opened.
//!
//! Invariants: every resolved address is canonicalised (IPv4-mapped IPv6
//! becomes IPv4) and checked before a socket is opened, and the socket
//! connects to exactly that checked address, so a second DNS answer can
//! never slip past the check (no DNS rebinding). With `egress.bind`, every
//! socket is bound to that source address before it connects. A host that
//! spells an IPv4 address other than as four decimals ([`noncanonical`]) is
//! refused before any lookup, at load, through the API and here alike.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use tokio::net::{TcpSocket, TcpStream};

use crate::deliver::egress::pool::PoolSettings;
use crate::deliver::egress::EgressError;

/// `[egress]`: how outbound connections are made, and where they may go.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// Extra trust roots (PEM) beside the built-in ones.
    pub ca_file: Option<PathBuf>,
    /// Refuse `http://` targets at load.
    pub https_only: bool,
    /// Let loopback, private (RFC 1918, fc00::/7) and CGNAT addresses through.
    pub allow_private: bool,
    /// Networks allowed even when a denied range holds them.
    pub allow: Vec<ipnet::IpNet>,
    /// Networks always refused, whatever else allows them.
    pub deny: Vec<ipnet::IpNet>,
    /// Source address of every outbound connection; `""` lets the OS choose.
    pub bind: BindAddr,
    /// Most outbound connections open at once, over all receivers.
    pub max_connections: Option<usize>,
    /// Most requests under way at once to one origin (scheme, host, port).
    pub max_connections_per_origin: Option<usize>,
    /// An idle outbound connection is closed after this long.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
}

impl EgressConfig {
    /// The connection settings, defaults filled in.
    pub fn pool(&self) -> PoolSettings {
        let d = PoolSettings::default();
        PoolSettings {
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            max_connections_per_origin: self
                .max_connections_per_origin
                .unwrap_or(d.max_connections_per_origin),
            idle_timeout: self.idle_timeout.unwrap_or(d.idle_timeout),
        }
    }
}

/// `egress.bind`: an IP address, or `""` for none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BindAddr(pub Option<IpAddr>);

impl<'de> Deserialize<'de> for BindAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Ok(BindAddr(None));
        }
        s.parse::<IpAddr>()
            .map(|ip| BindAddr(Some(ip)))
            .map_err(|_| serde::de::Error::custom(format!("`{s}` is not an IP address")))
    }
}

/// Why an address is in a denied range. Every kind but the last three can be
/// let through by `egress.allow`; see [`Kind::never`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Loopback,
    Private,
    LinkLocal,
    SharedCgnat,
    Documentation,
    Benchmarking,
    Reserved,
    Nat64,
    SixToFour,
    Teredo,
    Ipv4Compatible,
    Ipv4Translated,
    Unspecified,
    Multicast,
    Broadcast,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Loopback => "loopback",
            Kind::Private => "private",
            Kind::LinkLocal => "link-local (cloud metadata lives here)",
            Kind::SharedCgnat => "shared address space (CGNAT)",
            Kind::Documentation => "documentation",
            Kind::Benchmarking => "benchmarking",
            Kind::Reserved => "reserved",
            Kind::Nat64 => "NAT64",
            Kind::SixToFour => "6to4",
            Kind::Teredo => "Teredo",
            Kind::Ipv4Compatible => "IPv4-compatible IPv6",
            Kind::Ipv4Translated => "IPv4-translated IPv6",
            Kind::Unspecified => "unspecified",
            Kind::Multicast => "multicast",
            Kind::Broadcast => "broadcast",
        }
    }

    /// Kinds no receiver can have: connecting to the unspecified address
    /// reaches this host on Linux, and multicast or broadcast are not one
    /// peer. Nothing lets them through.
    pub fn never(self) -> bool {
        matches!(self, Kind::Unspecified | Kind::Multicast | Kind::Broadcast)
    }

    /// Kinds that `egress.allow_private = true` lets through. Link-local is
    /// not one of them: it holds cloud metadata services, so only an explicit
    /// `egress.allow` entry opens it.
    pub fn private(self) -> bool {
        matches!(self, Kind::Loopback | Kind::Private | Kind::SharedCgnat)
    }
}

/// Ranges denied by default. A range is judged by the most specific entry
/// holding it, so the reported kind is the narrowest one.
///
/// The table holds every entry of IANA's special-purpose address registries
/// whose "Globally Reachable" is False or N/A (or that IANA terminated):
/// <https://www.iana.org/assignments/iana-ipv4-special-registry/> and
/// <https://www.iana.org/assignments/iana-ipv6-special-registry/> (as of
/// the 2025-10-09 IPv6 update; `registries_say` in the tests lists every
/// row). hookrelay denies more than the registries in a few places, on
/// purpose:
/// - the whole of 192.0.0.0/24 and 2001::/23, whose globally reachable
///   sub-blocks are protocol anycast addresses and identifier prefixes
///   (PCP, TURN, DNS-SD, AMT, AS112-v6, ORCHIDv2, DETs), never a receiver;
/// - NAT64 (64:ff9b::/96, globally reachable): a translator would carry the
///   request to whatever IPv4 address it embeds, internal ones included;
/// - the rest of ::/8, which IANA keeps reserved (no receiver lives there),
///   with the IPv4-translated form ::ffff:0:0:0/96 named for what it is;
/// - fec0::/10 (deprecated site-local, RFC 3879), still routed as private
///   on some networks;
/// - multicast (224.0.0.0/4, ff00::/8), which has registries of its own.
const DENIED: &[(&str, Kind)] = &[
    ("0.0.0.0/8", Kind::Reserved),
    ("0.0.0.0/32", Kind::Unspecified),
    ("10.0.0.0/8", Kind::Private),
    ("100.64.0.0/10", Kind::SharedCgnat),
    ("127.0.0.0/8", Kind::Loopback),
    ("169.254.0.0/16", Kind::LinkLocal),
    ("172.16.0.0/12", Kind::Private),
    // IETF protocol assignments: DS-Lite/service continuity (/29), the
    // dummy address (.8), PCP and TURN anycast (.9, .10), NAT64 discovery
    // (.170, .171).
    ("192.0.0.0/24", Kind::Reserved),
    ("192.0.2.0/24", Kind::Documentation),
    // 6to4 relay anycast, terminated; 6a44 relay (192.88.99.2/32).
    ("192.88.99.0/24", Kind::SixToFour),
    ("192.168.0.0/16", Kind::Private),
    ("198.18.0.0/15", Kind::Benchmarking),
    ("198.51.100.0/24", Kind::Documentation),
    ("203.0.113.0/24", Kind::Documentation),
    ("224.0.0.0/4", Kind::Multicast),
    ("240.0.0.0/4", Kind::Reserved),
    ("255.255.255.255/32", Kind::Broadcast),
    ("::/8", Kind::Reserved),
    ("::/128", Kind::Unspecified),
    ("::1/128", Kind::Loopback),
    ("::/96", Kind::Ipv4Compatible),
    ("::ffff:0:0:0/96", Kind::Ipv4Translated),
    ("64:ff9b::/96", Kind::Nat64),
    ("64:ff9b:1::/48", Kind::Nat64),
    // Discard-only (RFC 6666) and the dummy prefix (RFC 9780).
    ("100::/64", Kind::Reserved),
    ("100:0:0:1::/64", Kind::Reserved),
    // IETF protocol assignments; Teredo and benchmarking are named below.
    ("2001::/23", Kind::Reserved),
    ("2001::/32", Kind::Teredo),
    ("2001:2::/48", Kind::Benchmarking),
    ("2001:db8::/32", Kind::Documentation),
    ("2002::/16", Kind::SixToFour),
    ("3fff::/20", Kind::Documentation),
    // Segment Routing (SRv6) SIDs (RFC 9602).
    ("5f00::/16", Kind::Reserved),
    ("fc00::/7", Kind::Private),
    ("fe80::/10", Kind::LinkLocal),
    ("fec0::/10", Kind::Private),
    ("ff00::/8", Kind::Multicast),
];

static DENIED_NETS: LazyLock<Vec<(IpNet, Kind)>> = LazyLock::new(|| {
    DENIED
        .iter()
        // The table is literal and a unit test parses every entry.
        .map(|(net, kind)| (net.parse().expect("literal network"), *kind))
        .collect()
});

/// The most specific denied range holding `ip` (already canonical), if any.
pub fn classify(ip: IpAddr) -> Option<(IpNet, Kind)> {
    DENIED_NETS
        .iter()
        .filter(|(net, _)| net.contains(&ip))
        .max_by_key(|(net, _)| net.prefix_len())
        .copied()
}

/// Why `host` (as a URL writes it) cannot be a receiver's host, whatever
/// the policy: an IPv4 address spelt other than as four decimal numbers
/// (`127.1`, `0x7f.1`, `0177.0.0.1`, `2130706433`), which resolvers
/// (`inet_aton`, so getaddrinfo) and browsers (the WHATWG URL standard)
/// still take as an address, or brackets around something that is not an
/// IPv6 address. Refusing them keeps one spelling per address, so a check
/// of a literal is never fooled by another spelling of it.
pub fn noncanonical(host: &str) -> Option<String> {
    if let Some(inner) = host.strip_prefix('[') {
        return match inner.strip_suffix(']').map(str::parse::<Ipv6Addr>) {
            Some(Ok(_)) => None,
            _ => Some(format!("`{host}` is not an IPv6 address")),
        };
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return None;
    }
    match url::Host::parse(host) {
        Ok(url::Host::Ipv4(v4)) => Some(format!(
            "`{host}` is not a canonical IPv4 address; write {v4}"
        )),
        Err(url::ParseError::InvalidIpv4Address) => Some(format!(
            "`{host}` ends in a number but is not an IPv4 address; write an address as four \
             decimal numbers (like 192.0.2.10), or use a host name"
        )),
        // A name (or something no resolver takes as a number).
        _ => None,
    }
}

/// The egress policy: which addresses outbound connections may reach, and
/// the source address they leave from.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    allow_private: bool,
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    bind: Option<IpAddr>,
}

impl Policy {
    pub fn new(c: &EgressConfig) -> Policy {
        Policy {
            allow_private: c.allow_private,
            allow: c.allow.clone(),
            deny: c.deny.clone(),
            bind: c.bind.0,
        }
    }

    /// Whether `ip` may be connected to; the error says why not. IPv4-mapped
    /// IPv6 addresses are judged (and connected to) as the IPv4 they carry.
    pub fn check(&self, ip: IpAddr) -> Result<IpAddr, String> {
        let ip = ip.to_canonical();
        if let Some(net) = self.deny.iter().find(|n| n.contains(&ip)) {
            return Err(format!("{ip} is in egress.deny ({net})"));
        }
        let Some((net, kind)) = classify(ip) else {
            return Ok(ip);
        };
        if kind.never() {
            return Err(format!(
                "{ip} is a {} address ({net}), which is never a receiver",
                kind.describe()
            ));
        }
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return Ok(ip);
        }
        if self.allow_private && kind.private() {
            return Ok(ip);
        }
        let hint = if kind.private() {
            "set egress.allow_private = true or name it in egress.allow"
        } else {
            "name it in egress.allow to permit it"
        };
        Err(format!(
            "{ip} is a {} address ({net}), denied by the egress policy; {hint}",
            kind.describe()
        ))
    }

    /// For a host written in the config: if it is an IP literal that this
    /// policy refuses, why. Host names are judged when they resolve.
    pub fn refuses_literal(&self, host: &str) -> Option<String> {
        if let Some(reason) = noncanonical(host) {
            return Some(reason);
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr = bare.parse().ok()?;
        self.check(ip).err()
    }

    /// Fails unless `egress.bind` is an address of this host, by binding a
    /// socket to it.
    pub fn check_bind(&self) -> Result<(), String> {
        let Some(ip) = self.bind else { return Ok(()) };
        std::net::TcpListener::bind(SocketAddr::new(ip, 0))
            .map(drop)
            .map_err(|e| format!("egress.bind: {ip} is not usable as a source address: {e}"))
    }

    /// Resolves `host`, checks every address, and connects to the first
    /// permitted one that answers, from `egress.bind` when set, all within
    /// `timeout`.
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<TcpStream, EgressError> {
        if let Some(reason) = noncanonical(host) {
            return Err(EgressError::Refused {
                host: host.to_string(),
                reason,
            });
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let resolved = tokio::time::timeout_at(deadline, tokio::net::lookup_host((bare, port)))
            .await
            .map_err(|_| EgressError::Resolve {
                host: host.to_string(),
                reason: format!("no answer within {timeout:?}"),
            })?
            .map_err(|e| EgressError::Resolve {
                host: host.to_string(),
                reason: e.to_string(),
            })?;
        let mut permitted = Vec::new();
        let mut refused = Vec::new();
        for addr in resolved {
            match self.check(addr.ip()) {
                Ok(ip) if self.bind.is_some_and(|b| b.is_ipv4() != ip.is_ipv4()) => {
                    refused.push(format!("{ip} is not of the same family as egress.bind"))
                }
                Ok(ip) => permitted.push(SocketAddr::new(ip, addr.port())),
                Err(reason) => refused.push(reason),
            }
        }
        if permitted.is_empty() {
            return Err(EgressError::Refused {
                host: host.to_string(),
                reason: if refused.is_empty() {
                    "the name has no addresses".to_string()
                } else {
                    refused.join("; ")
                },
            });
        }
        for reason in &refused {
            tracing::debug!(%host, %reason, "address skipped");
        }
        let mut last = String::new();
        for addr in permitted {
            match tokio::time::timeout_at(deadline, self.connect_one(addr)).await {
                Ok(Ok(s)) => return Ok(s),
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => {
                    last = format!("{addr}: no connection within {timeout:?}");
                    break;
                }
            }
        }
        Err(EgressError::Connect {
            host: host.to_string(),
            reason: last,
        })
    }

    /// Connects to `addr`, which `check` has permitted.
    async fn connect_one(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = self.bind {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        socket.connect(addr).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow_private: bool, allow: &[&str], deny: &[&str]) -> Policy {
        Policy::new(&EgressConfig {
            allow_private,
            allow: allow.iter().map(|n| n.parse().unwrap()).collect(),
            deny: deny.iter().map(|n| n.parse().unwrap()).collect(),
            bind: BindAddr(None),
            ..EgressConfig::default()
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// One address inside every denied range, with the kind it must get.
    const CASES: &[(&str, Kind)] = &[
        ("0.0.0.0", Kind::Unspecified),
        ("0.1.2.3", Kind::Reserved),
        ("10.0.0.1", Kind::Private),
        ("10.255.255.255", Kind::Private),
        ("100.64.0.1", Kind::SharedCgnat),
        ("100.127.255.254", Kind::SharedCgnat),
        ("127.0.0.1", Kind::Loopback),
        ("127.255.0.9", Kind::Loopback),
        ("169.254.169.254", Kind::LinkLocal),
        ("172.16.0.1", Kind::Private),
        ("172.31.255.255", Kind::Private),
        ("192.0.0.170", Kind::Reserved),
        ("192.0.2.10", Kind::Documentation),
        ("192.88.99.1", Kind::SixToFour),
        ("192.168.1.1", Kind::Private),
        ("198.18.0.1", Kind::Benchmarking),
        ("198.19.255.1", Kind::Benchmarking),
        ("198.51.100.7", Kind::Documentation),
        ("203.0.113.9", Kind::Documentation),
        ("224.0.0.1", Kind::Multicast),
        ("239.255.255.250", Kind::Multicast),
        ("240.0.0.1", Kind::Reserved),
        ("255.255.255.255", Kind::Broadcast),
        ("::", Kind::Unspecified),
        ("::1", Kind::Loopback),
        ("::10.0.0.1", Kind::Ipv4Compatible),
        ("::ffff:0:a00:1", Kind::Ipv4Translated),
        ("1::1", Kind::Reserved),
        ("::1:0:0:1", Kind::Reserved),
        ("64:ff9b::a00:1", Kind::Nat64),
        ("64:ff9b:1::1", Kind::Nat64),
        ("100::1", Kind::Reserved),
        ("100:0:0:1::1", Kind::Reserved),
        ("2001::1", Kind::Teredo),
        ("2001:1::1", Kind::Reserved),
        ("2001:10::1", Kind::Reserved),
        ("2001:1ff:ffff::1", Kind::Reserved),
        ("2001:2::1", Kind::Benchmarking),
        ("2001:db8::1", Kind::Documentation),
        ("2002:a00:1::1", Kind::SixToFour),
        ("3fff::1", Kind::Documentation),
        ("5f00::1", Kind::Reserved),
        ("fc00::1", Kind::Private),
        ("fd00:ec2::254", Kind::Private),
        ("fe80::1", Kind::LinkLocal),
        ("fec0::1", Kind::Private),
        ("ff02::1", Kind::Multicast),
        // IPv4-mapped forms are judged as the IPv4 address they carry.
        ("::ffff:127.0.0.1", Kind::Loopback),
        ("::ffff:10.1.2.3", Kind::Private),
        ("::ffff:169.254.169.254", Kind::LinkLocal),
        ("::ffff:100.64.1.1", Kind::SharedCgnat),
        ("::ffff:0.0.0.0", Kind::Unspecified),
    ];

    const PUBLIC: &[&str] = &[
        "1.1.1.1",
        "8.8.8.8",
        "93.184.216.34",
        "172.32.0.1",
        "100.128.0.1",
        "2606:4700:4700::1111",
        "2a00:1450:4001::1",
        "::ffff:8.8.8.8",
        // Just past denied ranges.
        "2001:200::1",
        "2003::1",
        "5f01::1",
        "4000::1",
    ];

    /// What the registries say of an entry's "Globally Reachable".
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Reach {
        Yes,
        No,
        /// N/A, or the entry was terminated (its fields are empty).
        NotApplicable,
    }

    /// Every row of IANA's IPv4 and IPv6 special-purpose address
    /// registries (IPv6 as updated 2025-10-09), with its "Globally
    /// Reachable", and whether hookrelay denies it by default (see the
    /// comment on `DENIED` for the globally reachable rows it denies).
    const REGISTRIES: &[(&str, &str, Reach, bool)] = &[
        ("0.0.0.0/8", "this host on this network", Reach::No, true),
        ("10.0.0.0/8", "private-use", Reach::No, true),
        ("100.64.0.0/10", "shared address space", Reach::No, true),
        ("127.0.0.0/8", "loopback", Reach::No, true),
        ("169.254.0.0/16", "link local", Reach::No, true),
        ("172.16.0.0/12", "private-use", Reach::No, true),
        ("192.0.0.0/24", "IETF protocol assignments", Reach::No, true),
        (
            "192.0.0.0/29",
            "IPv4 service continuity prefix",
            Reach::No,
            true,
        ),
        ("192.0.0.8/32", "IPv4 dummy address", Reach::No, true),
        ("192.0.0.9/32", "PCP anycast", Reach::Yes, true),
        ("192.0.0.10/32", "TURN anycast", Reach::Yes, true),
        ("192.0.0.170/32", "NAT64/DNS64 discovery", Reach::No, true),
        ("192.0.0.171/32", "NAT64/DNS64 discovery", Reach::No, true),
        (
            "192.0.2.0/24",
            "documentation (TEST-NET-1)",
            Reach::No,
            true,
        ),
        ("192.31.196.0/24", "AS112-v4", Reach::Yes, false),
        ("192.52.193.0/24", "AMT", Reach::Yes, false),
        (
            "192.88.99.0/24",
            "6to4 relay anycast (terminated)",
            Reach::NotApplicable,
            true,
        ),
        ("192.88.99.2/32", "6a44 relay anycast", Reach::No, true),
        ("192.168.0.0/16", "private-use", Reach::No, true),
        (
            "192.175.48.0/24",
            "direct delegation AS112",
            Reach::Yes,
            false,
        ),
        ("198.18.0.0/15", "benchmarking", Reach::No, true),
        (
            "198.51.100.0/24",
            "documentation (TEST-NET-2)",
            Reach::No,
            true,
        ),
        (
            "203.0.113.0/24",
            "documentation (TEST-NET-3)",
            Reach::No,
            true,
        ),
        ("240.0.0.0/4", "reserved", Reach::No, true),
        ("255.255.255.255/32", "limited broadcast", Reach::No, true),
        ("::1/128", "loopback", Reach::No, true),
        ("::/128", "unspecified", Reach::No, true),
        ("::ffff:0:0/96", "IPv4-mapped", Reach::No, true),
        ("64:ff9b::/96", "IPv4-IPv6 translation", Reach::Yes, true),
        (
            "64:ff9b:1::/48",
            "IPv4-IPv6 translation (local)",
            Reach::No,
            true,
        ),
        ("100::/64", "discard-only", Reach::No, true),
        ("100:0:0:1::/64", "dummy IPv6 prefix", Reach::No, true),
        ("2001::/23", "IETF protocol assignments", Reach::No, true),
        ("2001::/32", "Teredo", Reach::NotApplicable, true),
        ("2001:1::1/128", "PCP anycast", Reach::Yes, true),
        ("2001:1::2/128", "TURN anycast", Reach::Yes, true),
        ("2001:1::3/128", "DNS-SD SRP anycast", Reach::Yes, true),
        ("2001:2::/48", "benchmarking", Reach::No, true),
        ("2001:3::/32", "AMT", Reach::Yes, true),
        ("2001:4:112::/48", "AS112-v6", Reach::Yes, true),
        (
            "2001:10::/28",
            "ORCHID (terminated)",
            Reach::NotApplicable,
            true,
        ),
        ("2001:20::/28", "ORCHIDv2", Reach::Yes, true),
        ("2001:30::/28", "drone remote ID (DETs)", Reach::Yes, true),
        ("2001:db8::/32", "documentation", Reach::No, true),
        ("2002::/16", "6to4", Reach::NotApplicable, true),
        (
            "2620:4f:8000::/48",
            "direct delegation AS112",
            Reach::Yes,
            false,
        ),
        ("3fff::/20", "documentation", Reach::No, true),
        ("5f00::/16", "SRv6 SIDs", Reach::No, true),
        ("fc00::/7", "unique-local", Reach::No, true),
        ("fe80::/10", "link-local unicast", Reach::No, true),
    ];

    /// The first and the last address of `net`.
    fn ends(net: IpNet) -> [IpAddr; 2] {
        [net.network(), net.broadcast()]
    }

    #[test]
    fn registries_say() {
        let p = policy(false, &[], &[]);
        for &(block, name, reach, denied) in REGISTRIES {
            let net: IpNet = block.parse().unwrap();
            assert!(
                denied || reach == Reach::Yes,
                "{block} ({name}) is not globally reachable, so it must be denied"
            );
            for addr in ends(net) {
                assert_eq!(
                    p.check(addr).is_err(),
                    denied,
                    "{addr} in {block} ({name}, globally reachable: {reach:?})"
                );
                // An IPv4 address written IPv4-mapped is judged the same.
                if let IpAddr::V4(v4) = addr {
                    let mapped = IpAddr::V6(v4.to_ipv6_mapped());
                    assert_eq!(p.check(mapped).is_err(), denied, "{mapped} ({name})");
                }
            }
        }
    }

    #[test]
    fn the_narrowest_range_names_the_kind() {
        assert_eq!(classify(ip("2001::1")).map(|c| c.1), Some(Kind::Teredo));
        assert_eq!(
            classify(ip("2001:2::1")).map(|c| c.1),
            Some(Kind::Benchmarking)
        );
        assert_eq!(classify(ip("2001:3::1")).map(|c| c.1), Some(Kind::Reserved));
        assert_eq!(
            classify(ip("0.0.0.0")).map(|c| c.1),
            Some(Kind::Unspecified)
        );
        assert_eq!(classify(ip("::")).map(|c| c.1), Some(Kind::Unspecified));
        assert_eq!(classify(ip("::1")).map(|c| c.1), Some(Kind::Loopback));
    }

    #[test]
    fn every_table_entry_parses_and_every_range_is_covered() {
        assert_eq!(DENIED_NETS.len(), DENIED.len());
        for (net, _) in DENIED {
            let net: IpNet = net.parse().unwrap();
            let first = net.network();
            assert!(
                classify(first).is_some(),
                "{net} has no case in the table of denied ranges"
            );
            assert!(
                CASES
                    .iter()
                    .any(|(a, _)| net.contains(&ip(a).to_canonical())),
                "no test case inside {net}"
            );
        }
    }

    #[test]
    fn denied_ranges_are_refused_by_default() {
        let p = policy(false, &[], &[]);
        for (addr, kind) in CASES {
            let canonical = ip(addr).to_canonical();
            assert_eq!(classify(canonical).map(|c| c.1), Some(*kind), "{addr}");
            let e = p.check(ip(addr)).unwrap_err();
            assert!(e.contains(kind.describe()), "{addr}: {e}");
        }
        for addr in PUBLIC {
            assert_eq!(p.check(ip(addr)), Ok(ip(addr).to_canonical()), "{addr}");
        }
    }

    #[test]
    fn allow_private_opens_only_loopback_private_and_cgnat() {
        let p = policy(true, &[], &[]);
        for (addr, kind) in CASES {
            assert_eq!(
                p.check(ip(addr)).is_ok(),
                kind.private(),
                "{addr} ({kind:?})"
            );
        }
    }

    #[test]
    fn allow_names_exceptions_but_never_kinds_stay_refused() {
        let p = policy(
            false,
            &["127.0.0.0/8", "::1/128", "169.254.169.254/32"],
            &[],
        );
        assert_eq!(p.check(ip("127.0.0.1")), Ok(ip("127.0.0.1")));
        assert_eq!(p.check(ip("::ffff:127.0.0.2")), Ok(ip("127.0.0.2")));
        assert_eq!(p.check(ip("::1")), Ok(ip("::1")));
        assert!(p.check(ip("169.254.169.254")).is_ok());
        assert!(p.check(ip("169.254.169.253")).is_err());
        assert!(p.check(ip("10.0.0.1")).is_err());

        let everything = policy(true, &["0.0.0.0/0", "::/0"], &[]);
        for (addr, kind) in CASES {
            assert_eq!(everything.check(ip(addr)).is_ok(), !kind.never(), "{addr}");
        }
    }

    #[test]
    fn deny_always_wins() {
        let p = policy(
            true,
            &["10.0.0.0/8"],
            &["10.1.0.0/16", "8.8.8.8/32", "2606::/16"],
        );
        assert!(p.check(ip("10.2.0.1")).is_ok());
        let e = p.check(ip("10.1.0.1")).unwrap_err();
        assert!(e.contains("egress.deny"), "{e}");
        assert!(p.check(ip("8.8.8.8")).is_err());
        assert!(p.check(ip("::ffff:8.8.8.8")).is_err());
        assert!(p.check(ip("2606:4700:4700::1111")).is_err());
        assert!(p.check(ip("1.1.1.1")).is_ok());
    }

    #[test]
    fn literal_hosts_are_judged_at_load() {
        let p = policy(false, &[], &[]);
        assert!(p.refuses_literal("127.0.0.1").is_some());
        assert!(p.refuses_literal("[::1]").is_some());
        assert!(p.refuses_literal("[::ffff:169.254.169.254]").is_some());
        assert!(p.refuses_literal("8.8.8.8").is_none());
        assert!(
            p.refuses_literal("localhost").is_none(),
            "names are judged when resolved"
        );
    }

    #[test]
    fn other_spellings_of_an_ipv4_address_are_refused() {
        let p = policy(true, &["0.0.0.0/0"], &[]);
        for (host, canonical) in [
            ("2130706433", "127.0.0.1"),
            ("0x7f000001", "127.0.0.1"),
            ("0x7f.1", "127.0.0.1"),
            ("127.1", "127.0.0.1"),
            ("127.0.1", "127.0.0.1"),
            ("0177.0.0.1", "127.0.0.1"),
            ("127.000.000.001", "127.0.0.1"),
            ("0X7F.0.0.1", "127.0.0.1"),
            ("127.0.0.1.", "127.0.0.1"),
            ("3232235777", "192.168.1.1"),
            ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
            ("8.8.8.010", "8.8.8.8"),
            ("0", "0.0.0.0"),
        ] {
            let e = noncanonical(host).unwrap_or_else(|| panic!("{host} passed"));
            assert!(
                e.contains("not a canonical IPv4 address")
                    && e.ends_with(&format!("write {canonical}")),
                "{host}: {e}"
            );
            // Whatever the policy lets through.
            assert_eq!(p.refuses_literal(host), Some(e), "{host}");
        }
        for host in [
            "1.2.3.4.5",
            "256.0.0.1",
            "example.0x10",
            "0x100000000",
            "1.2.3.09",
        ] {
            let e = noncanonical(host).unwrap_or_else(|| panic!("{host} passed"));
            assert!(e.contains("not an IPv4 address"), "{host}: {e}");
        }
        for host in ["[::1", "[127.0.0.1]", "[fe80::1%25eth0]", "[::ffff:127.1]"] {
            let e = noncanonical(host).unwrap_or_else(|| panic!("{host} passed"));
            assert!(e.contains("not an IPv6 address"), "{host}: {e}");
        }
        for host in [
            "127.0.0.1",
            "8.8.8.8",
            "[::1]",
            "[::ffff:127.0.0.1]",
            "example.com",
            "hooks.example.com.",
            "1password.example",
            "localhost",
            "x--1.example",
        ] {
            assert_eq!(noncanonical(host), None, "{host}");
        }
    }

    #[tokio::test]
    async fn another_spelling_is_never_resolved_or_connected_to() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let allowed = policy(false, &["127.0.0.0/8"], &[]);
        let e = allowed
            .connect("127.1", port, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(e, EgressError::Refused { .. }), "{e}");
        assert!(e.to_string().contains("write 127.0.0.1"), "{e}");
    }

    #[test]
    fn bind_must_be_local() {
        let mut p = policy(false, &[], &[]);
        p.bind = Some(ip("127.0.0.2"));
        assert!(p.check_bind().is_ok());
        // 192.0.2.1 (documentation) is never an address of this host.
        p.bind = Some(ip("192.0.2.1"));
        assert!(p.check_bind().is_err());
    }

    #[tokio::test]
    async fn a_refused_name_is_never_connected_to() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let p = policy(false, &[], &[]);
        let e = p
            .connect("localhost", port, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(e, EgressError::Refused { .. }), "{e}");
        assert!(e.to_string().contains("loopback"), "{e}");
        let allowed = policy(false, &["127.0.0.0/8", "::1/128"], &[]);
        let s = allowed
            .connect("localhost", port, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(s.peer_addr().unwrap().port(), port);
    }
}
