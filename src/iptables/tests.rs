use clap::Parser;

use super::*;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    o: Options,
}

fn dry(args: &[&str]) -> Vec<String> {
    let mut argv = vec!["iptables", "--dry-run"];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv).unwrap();
    execute(&cli.o)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn defaults_are_istios_redirect_rules() {
    let rules = dry(&["-d", "15090,15021,15020"]);
    let expect = [
        "iptables -t nat -N ISTIO_INBOUND",
        "iptables -t nat -N ISTIO_REDIRECT",
        "iptables -t nat -N ISTIO_IN_REDIRECT",
        "iptables -t nat -N ISTIO_OUTPUT",
        "iptables -t nat -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "iptables -t nat -A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "iptables -t nat -A PREROUTING -p tcp -j ISTIO_INBOUND",
        "iptables -t nat -A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN",
        "iptables -t nat -A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN",
        "iptables -t nat -A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN",
        "iptables -t nat -A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
        "iptables -t nat -A OUTPUT -p tcp -j ISTIO_OUTPUT",
        "iptables -t nat -A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN",
        "iptables -t nat -A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
        "iptables -t nat -A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN",
        "iptables -t nat -A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "iptables -t nat -A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT",
        "iptables -t nat -A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN",
        "iptables -t nat -A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
        "iptables -t nat -A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "iptables -t nat -A ISTIO_OUTPUT -j ISTIO_REDIRECT",
    ];
    assert_eq!(rules, expect);
}

#[test]
fn include_and_exclude_lists_and_ipv6() {
    let rules = dry(&[
        "-b",
        "8080,9090",
        "-i",
        "10.96.0.0/12,fd00::/8",
        "-x",
        "10.96.0.10/32",
        "-o",
        "3306",
        "-q",
        "443",
        "--ipv6",
        "-p",
        "16001",
        "-z",
        "16006",
    ]);
    let has = |r: &str| {
        assert!(
            rules.iter().any(|x| x == r),
            "missing {r}:\n{}",
            rules.join("\n")
        )
    };
    has("iptables -t nat -A ISTIO_INBOUND -p tcp --dport 8080 -j ISTIO_IN_REDIRECT");
    has("iptables -t nat -A ISTIO_INBOUND -p tcp --dport 9090 -j ISTIO_IN_REDIRECT");
    has("iptables -t nat -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 16001");
    has("iptables -t nat -A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006");
    has("iptables -t nat -A ISTIO_OUTPUT -p tcp --dport 3306 -j RETURN");
    has("iptables -t nat -A ISTIO_OUTPUT -d 10.96.0.10/32 -j RETURN");
    has("iptables -t nat -A ISTIO_OUTPUT -p tcp --dport 443 -j ISTIO_REDIRECT");
    has("iptables -t nat -A ISTIO_OUTPUT -d 10.96.0.0/12 -j ISTIO_REDIRECT");
    has("ip6tables -t nat -A ISTIO_OUTPUT -d fd00::/8 -j ISTIO_REDIRECT");
    has("ip6tables -t nat -A ISTIO_OUTPUT -o lo -s ::6/128 -j RETURN");
    has("ip6tables -t nat -A ISTIO_OUTPUT -d ::1/128 -j RETURN");
    // Families do not mix; with an include list there is no catch-all.
    assert!(!rules
        .iter()
        .any(|r| r.starts_with("iptables") && r.contains("fd00::")));
    assert!(!rules
        .iter()
        .any(|r| r.starts_with("ip6tables") && r.contains("10.96.")));
    assert!(!rules
        .iter()
        .any(|r| r.ends_with("ISTIO_OUTPUT -j ISTIO_REDIRECT")));
}

#[test]
fn tproxy_mode_marks_and_routes_locally() {
    let rules = dry(&["-m", "TPROXY", "-d", "22"]);
    let has = |r: &str| {
        assert!(
            rules.iter().any(|x| x == r),
            "missing {r}:\n{}",
            rules.join("\n")
        )
    };
    has("iptables -t mangle -A ISTIO_DIVERT -j MARK --set-mark 1337");
    has("ip -f inet rule add fwmark 1337 lookup 133");
    has("ip -f inet route add local default dev lo table 133");
    has("iptables -t mangle -A ISTIO_TPROXY ! -d 127.0.0.1/32 -p tcp -j TPROXY --tproxy-mark 1337/0xffffffff --on-port 15006");
    has("iptables -t mangle -A ISTIO_INBOUND -p tcp --dport 22 -j RETURN");
    has("iptables -t mangle -A ISTIO_INBOUND -p tcp -j ISTIO_TPROXY");
    // Inbound is not NAT-redirected in TPROXY mode; outbound still is.
    assert!(!rules.iter().any(|r| r.contains("-t nat -A PREROUTING")));
    has("iptables -t nat -A ISTIO_OUTPUT -j ISTIO_REDIRECT");
}

#[test]
fn bad_flags_are_named() {
    let bad = |args: &[&str]| {
        let mut argv = vec!["iptables"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).unwrap();
        execute(&cli.o).unwrap_err().to_string()
    };
    assert_eq!(
        bad(&["-d", "22,abc"]),
        "--istio-local-exclude-ports: 'abc' is not a port"
    );
    assert_eq!(
        bad(&["-x", "10.0.0.0/40"]),
        "--istio-service-exclude-cidr: '10.0.0.0/40' has a bad prefix length"
    );
    assert_eq!(
        bad(&["-u", "root"]),
        "--proxy-uid: 'root' is not a numeric id"
    );
    assert!(Cli::try_parse_from(["iptables", "-m", "BOGUS"]).is_err());
}

#[test]
fn cleanup_lists_both_families_whatever_the_flags() {
    let rules = dry(&["--cleanup"]);
    assert!(rules.contains(&"iptables -t nat -D OUTPUT -p tcp -j ISTIO_OUTPUT".to_string()));
    assert!(rules.contains(&"ip6tables -t nat -X ISTIO_OUTPUT".to_string()));
    assert!(rules.contains(&"iptables -t mangle -X ISTIO_TPROXY".to_string()));
    assert!(rules.contains(&"ip -f inet rule del fwmark 1337 lookup 133".to_string()));
}
