//! A target's delivery policy: timeouts, attempts and backoff, what counts
//! as success, how much at once, and the circuit breaker. `[delivery]` sets
//! the defaults; each target may override any of them.

use std::time::Duration;

use serde::Deserialize;

use crate::rate::Rate;

/// `[delivery]`: the defaults every target starts from.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub success: SuccessRanges,
    pub concurrency: usize,
    pub rate: Rate,
    /// After this many failed attempts in a row a target's deliveries wait.
    pub circuit: CircuitConfig,
    /// On shutdown, how long attempts already under way may take to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            max_attempts: 10,
            backoff: Backoff::default(),
            success: SuccessRanges(vec![(200, 299)]),
            concurrency: 16,
            rate: Rate::of(50, 100),
            circuit: CircuitConfig::default(),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl DeliveryConfig {
    /// Checks the values; errors are (key under `at`, reason).
    pub fn validate(&self, at: &str) -> Result<(), (String, String)> {
        let bad = |k: &str, r: &str| Err((format!("{at}.{k}"), r.to_string()));
        if self.timeout.is_zero() {
            return bad("timeout", "must be above 0");
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout", "must be above 0");
        }
        if self.max_attempts == 0 {
            return bad("max_attempts", "must be at least 1");
        }
        if self.concurrency == 0 || self.concurrency > 1024 {
            return bad("concurrency", "must be between 1 and 1024");
        }
        let b = &self.backoff;
        if b.initial.is_zero() {
            return bad("backoff.initial", "must be above 0");
        }
        if b.max < b.initial {
            return bad("backoff.max", "must not be below backoff.initial");
        }
        if !(b.multiplier.is_finite() && (1.0..=100.0).contains(&b.multiplier)) {
            return bad("backoff.multiplier", "must be between 1.0 and 100.0");
        }
        if !(b.jitter.is_finite() && (0.0..=1.0).contains(&b.jitter)) {
            return bad("backoff.jitter", "must be between 0.0 and 1.0");
        }
        Ok(())
    }
}

/// Exponential backoff between attempts.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Backoff {
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    pub multiplier: f64,
    /// Each delay is spread uniformly over ±jitter of itself.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(20),
            max: Duration::from_secs(3600),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The delay after failed attempt number `attempt` (1-based), before
    /// jitter: `min(max, initial * multiplier^(attempt-1))`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(1000) as i32;
        let secs = self.initial.as_secs_f64() * self.multiplier.powi(exp);
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// `delay` spread by jitter; `unit` is a uniform sample from [0, 1).
    pub fn jittered(&self, attempt: u32, unit: f64) -> Duration {
        let base = self.delay(attempt).as_secs_f64();
        let factor = 1.0 + self.jitter * (2.0 * unit - 1.0);
        Duration::from_secs_f64((base * factor).max(0.0))
    }
}

/// The circuit breaker: after `failures` failed attempts in a row (0: never)
/// the target's deliveries wait for `cooldown`, then one probe at a time
/// decides whether to close.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitConfig {
    pub failures: u32,
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        CircuitConfig {
            failures: 10,
            cooldown: Duration::from_secs(30),
        }
    }
}

/// Status codes that count as delivered, e.g. `["200-299"]` or `["200-308", "410"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuccessRanges(pub Vec<(u16, u16)>);

impl SuccessRanges {
    /// The ranges as written: `200-299`, or `409` for a single status.
    pub fn to_strings(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|&(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect()
    }

    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
    }

    pub fn parse_one(s: &str) -> Result<(u16, u16), String> {
        let code = |t: &str| -> Result<u16, String> {
            match t.trim().parse::<u16>() {
                Ok(c) if (100..=599).contains(&c) => Ok(c),
                _ => Err(format!(
                    "`{s}` is not a status code (100-599) or a range like 200-299"
                )),
            }
        };
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (code(a)?, code(b)?),
            None => (code(s)?, code(s)?),
        };
        if lo > hi {
            return Err(format!("`{s}`: range is backwards"));
        }
        Ok((lo, hi))
    }
}

impl<'de> Deserialize<'de> for SuccessRanges {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items = Vec::<String>::deserialize(d)?;
        if items.is_empty() {
            return Err(serde::de::Error::custom(
                "at least one status range is needed",
            ));
        }
        items
            .iter()
            .map(|s| SuccessRanges::parse_one(s))
            .collect::<Result<Vec<_>, _>>()
            .map(SuccessRanges)
            .map_err(serde::de::Error::custom)
    }
}
