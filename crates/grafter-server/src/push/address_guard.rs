//! The SSRF guard: push targets may not reach addresses inside the network
//! Grafter runs in (loopback, private, link-local, unique-local, CGNAT,
//! unspecified, multicast, broadcast and reserved ranges, IPv4 and IPv6,
//! IPv4 written in IPv6 included) unless the server allows it
//! (`push.allow_private`). Whoever can set a push target could otherwise make
//! Grafter POST into the internal network: a database's HTTP port, a cloud
//! metadata service.
//!
//! Two checks: a URL whose host is a literal address is refused when it is
//! set (`PUT /v1/queues/{name}`) and again at delivery (a target stored
//! before, or from the file); a host name is checked where it is resolved,
//! by [`GuardedResolver`], the push client's resolver, which hands reqwest
//! only the allowed addresses it resolved, so the address connected to is the
//! address checked (a name that resolves differently a moment later, DNS
//! rebinding, gains nothing).
//!
//! Both checks read the URL as the push client will: one it cannot parse
//! (`check_target_url` refuses it where it is set) would slip past them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The range `ip` is in, if pushes may not go there.
pub fn refused_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(match () {
        _ if ip.is_unspecified() || a == 0 => "unspecified (0.0.0.0/8)",
        _ if ip.is_loopback() => "loopback (127.0.0.0/8)",
        _ if ip.is_private() => "private (10/8, 172.16/12, 192.168/16)",
        _ if a == 100 && (64..128).contains(&b) => "CGNAT (100.64.0.0/10)",
        _ if ip.is_link_local() => "link-local (169.254.0.0/16)",
        _ if ip.is_multicast() => "multicast (224.0.0.0/4)",
        _ if a >= 240 => "reserved or broadcast (240.0.0.0/4)",
        _ => return None,
    })
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    // An IPv4 address in IPv6 clothing is what it carries: mapped
    // (::ffff:a.b.c.d) and the NAT64 prefix (64:ff9b::/96).
    if let Some(v4) = ip.to_ipv4_mapped() {
        return refused_v4(v4);
    }
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., hi, lo] = segments;
        return refused_v4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    }
    Some(match segments[0] {
        _ if ip.is_unspecified() => "unspecified (::)",
        _ if ip.is_loopback() => "loopback (::1)",
        // The deprecated IPv4-compatible form (::a.b.c.d).
        _ if segments[..6] == [0; 6] => "IPv4-compatible (::/96)",
        s if s & 0xfe00 == 0xfc00 => "unique-local (fc00::/7)",
        s if s & 0xffc0 == 0xfe80 => "link-local (fe80::/10)",
        s if s & 0xffc0 == 0xfec0 => "site-local (fec0::/10)",
        s if s & 0xff00 == 0xff00 => "multicast (ff00::/8)",
        _ => return None,
    })
}

/// Checks that the push client can read a target's URL as it will send to
/// it: [`grafter_core::PushTarget::validate`] checks its form only, and a URL
/// the client cannot parse (an IPv6 zone id, `[fe80::1%eth0]`, say) would
/// fail every delivery, and pass the address guard unseen.
fn check_target_url(url: &str) -> Result<(), grafter_core::ValidationError> {
    reqwest::Url::parse(url).map(drop).map_err(|e| {
        grafter_core::ValidationError::new("push.url", format!("is not a usable URL: {e}"))
    })
}

/// Why a push target may not be set.
pub(crate) enum TargetRefusal {
    /// Its settings are not usable (the field and why).
    Invalid(grafter_core::ValidationError),
    /// Its URL's literal address is inside the server's own network.
    Guarded(String),
}

/// Checks a push target as it is set, by the API or the config file, and
/// writes its URL's scheme in lower case: its settings, that the push client
/// can read its URL, and, unless the server allows private addresses, that a
/// literal address is not inside its network (a host name is checked where
/// it resolves).
pub(crate) fn admit_target(
    target: &mut grafter_core::PushTarget,
    allow_private: bool,
) -> Result<(), TargetRefusal> {
    target.validate().map_err(TargetRefusal::Invalid)?;
    check_target_url(&target.url).map_err(TargetRefusal::Invalid)?;
    if !allow_private {
        if let Some(why) = refused_url(&target.url) {
            return Err(TargetRefusal::Guarded(why));
        }
    }
    target.lowercase_scheme();
    Ok(())
}

/// Why a URL whose host is a refused literal address may not be a push
/// target; `None` for an allowed address or a host name (checked when
/// resolved).
pub fn refused_url(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    // The parser writes every form of an IPv4 literal (`2130706433`,
    // `0x7f.1`) as a dotted quad, and an IPv6 one in brackets.
    let host = url.host_str()?;
    let ip: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    refused_range(ip).map(|range| refusal(&ip.to_string(), range))
}

fn refusal(what: &str, range: &str) -> String {
    format!(
        "{what} is a {range} address: push targets may not reach the server's own network \
         unless it allows them (push.allow_private, --allow-private-push)"
    )
}

/// Resolves host names for the push client, keeping only allowed addresses.
#[derive(Debug)]
pub struct GuardedResolver;

/// A name that resolved only to refused addresses.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str();
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|address| refused_range(address.ip()).is_none())
                .collect();
            if allowed.is_empty() {
                let first = resolved.first().map(SocketAddr::ip);
                let message = match first.and_then(|ip| refused_range(ip).map(|r| (ip, r))) {
                    Some((ip, range)) => refusal(&format!("{host} resolves to {ip}, which"), range),
                    None => format!("{host} resolves to no address"),
                };
                return Err(Box::new(Refused(message)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_inside_range_is_refused_and_public_addresses_pass() {
        for refused in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.0.10",
            "100.64.0.1",
            "100.127.255.254",
            "169.254.169.254",
            "224.0.0.251",
            "239.255.255.250",
            "255.255.255.255",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "::127.0.0.1",
        ] {
            let ip: IpAddr = refused.parse().unwrap();
            assert!(refused_range(ip).is_some(), "{refused} should be refused");
        }
        for allowed in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.169.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            let ip: IpAddr = allowed.parse().unwrap();
            assert_eq!(refused_range(ip), None, "{allowed} should pass");
        }
    }

    #[test]
    fn literal_hosts_are_judged_names_are_left_to_the_resolver() {
        assert!(refused_url("http://127.0.0.1:8080/jobs")
            .unwrap()
            .contains("loopback"));
        assert!(refused_url("http://[::ffff:7f00:1]/jobs")
            .unwrap()
            .contains("loopback"));
        assert!(refused_url("https://169.254.169.254/latest/meta-data")
            .unwrap()
            .contains("link-local"));
        // Forms browsers and resolvers accept for 127.0.0.1 parse to it.
        assert!(refused_url("http://2130706433/").is_some());
        assert!(refused_url("http://0x7f.1/").is_some());
        assert_eq!(refused_url("https://app.example.com/jobs"), None);
        assert_eq!(refused_url("https://93.184.216.34/jobs"), None);
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_of_the_inside_network() {
        let error = match GuardedResolver.resolve("localhost".parse().unwrap()).await {
            Ok(_) => panic!("localhost resolved to an allowed address"),
            Err(error) => error.to_string(),
        };
        assert!(
            error.contains("localhost resolves to") && error.contains("loopback"),
            "{error}"
        );
    }
}
