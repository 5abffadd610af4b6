//! `ringside iptables`: the traffic capture rules istio-init (istio-iptables) installs in
//! a pod's network namespace, with its flags and their meaning.
//!
//! Outbound TCP is redirected to the proxy's outbound port (15001) and inbound TCP to
//! its inbound capture port (15006), except:
//! - traffic of the proxy's own uid/gid (1337), so its upstream connections do not loop;
//! - the inbound passthrough source 127.0.0.6 (::6), from which the proxy reaches the app;
//! - excluded ports and CIDRs, and loopback traffic of the app to 127.0.0.1.
//!
//! The proxy's own connections to the pod's IP over `lo` (an app calling itself through
//! a service) are sent to the inbound port, as Istio does. Inbound capture is REDIRECT
//! (NAT) or TPROXY (mangle + policy routing, the listener binds with `transparent`).
//!
//! Rules are applied one command at a time, exactly as `--dry-run` prints them. Applying
//! first removes whatever an earlier run added, so it is idempotent; `--cleanup` removes
//! everything.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::Command;

/// Inbound interception mode (`-m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    #[value(name = "REDIRECT", alias = "redirect")]
    Redirect,
    #[value(name = "TPROXY", alias = "tproxy")]
    Tproxy,
}

/// The flags of istio-iptables that Ringside implements.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Port outbound traffic is redirected to.
    #[arg(short = 'p', long = "envoy-port", default_value_t = 15001)]
    pub proxy_port: u16,
    /// Port inbound traffic is redirected to.
    #[arg(short = 'z', long = "inbound-capture-port", default_value_t = 15006)]
    pub inbound_port: u16,
    /// Uids whose traffic is never captured (the proxy's), comma-separated.
    #[arg(short = 'u', long = "proxy-uid", default_value = "1337")]
    pub uids: String,
    /// Gids whose traffic is never captured, comma-separated.
    #[arg(short = 'g', long = "proxy-gid", default_value = "1337")]
    pub gids: String,
    /// Inbound interception: REDIRECT or TPROXY.
    #[arg(
        short = 'm',
        long = "istio-inbound-interception-mode",
        value_enum,
        default_value = "REDIRECT"
    )]
    pub mode: Mode,
    /// Inbound ports to capture, comma-separated; `*` for all.
    #[arg(short = 'b', long = "istio-inbound-ports", default_value = "*")]
    pub inbound_ports: String,
    /// Inbound ports never captured (with `-b '*'`), comma-separated.
    #[arg(short = 'd', long = "istio-local-exclude-ports", default_value = "")]
    pub inbound_exclude_ports: String,
    /// Outbound destinations to capture, CIDRs comma-separated; `*` for all.
    #[arg(short = 'i', long = "istio-service-cidr", default_value = "*")]
    pub outbound_cidrs: String,
    /// Outbound destinations never captured, CIDRs comma-separated.
    #[arg(short = 'x', long = "istio-service-exclude-cidr", default_value = "")]
    pub outbound_exclude_cidrs: String,
    /// Outbound destination ports never captured, comma-separated.
    #[arg(
        short = 'o',
        long = "istio-local-outbound-ports-exclude",
        default_value = ""
    )]
    pub outbound_exclude_ports: String,
    /// Outbound destination ports always captured (even outside `-i`), comma-separated.
    #[arg(short = 'q', long = "istio-outbound-ports", default_value = "")]
    pub outbound_ports: String,
    /// Firewall mark of TPROXY-captured packets.
    #[arg(short = 't', long = "inbound-tproxy-mark", default_value_t = 1337)]
    pub tproxy_mark: u32,
    /// Routing table that delivers TPROXY-marked packets locally.
    #[arg(
        short = 'r',
        long = "inbound-tproxy-route-table",
        default_value_t = 133
    )]
    pub tproxy_table: u32,
    /// Also capture IPv6 (ip6tables).
    #[arg(long = "ipv6")]
    pub ipv6: bool,
    /// Print the commands instead of running them.
    #[arg(short = 'n', long = "dry-run")]
    pub dry_run: bool,
    /// Remove the rules instead of adding them.
    #[arg(long = "cleanup")]
    pub cleanup: bool,
}

/// A flag value that is not valid.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {reason}")]
pub struct FlagError {
    pub flag: &'static str,
    pub reason: String,
}

fn list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty())
}

fn ports(s: &str, flag: &'static str) -> Result<Vec<u16>, FlagError> {
    list(s)
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| FlagError {
                    flag,
                    reason: format!("'{p}' is not a port"),
                })
        })
        .collect()
}

fn ids(s: &str, flag: &'static str) -> Result<Vec<u32>, FlagError> {
    list(s)
        .map(|p| {
            p.parse::<u32>().map_err(|_| FlagError {
                flag,
                reason: format!("'{p}' is not a numeric id"),
            })
        })
        .collect()
}

/// A CIDR as given, with its family.
struct Cidr {
    text: String,
    v6: bool,
}

fn cidrs(s: &str, flag: &'static str) -> Result<Vec<Cidr>, FlagError> {
    list(s)
        .map(|c| {
            let (addr, len) = c.split_once('/').unwrap_or((c, ""));
            let ip: IpAddr = addr.parse().map_err(|_| FlagError {
                flag,
                reason: format!("'{c}' is not a CIDR"),
            })?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len: u32 = if len.is_empty() {
                max
            } else {
                len.parse()
                    .ok()
                    .filter(|&l| l <= max)
                    .ok_or_else(|| FlagError {
                        flag,
                        reason: format!("'{c}' has a bad prefix length"),
                    })?
            };
            Ok(Cidr {
                text: format!("{ip}/{len}"),
                v6: ip.is_ipv6(),
            })
        })
        .collect()
}

/// The checked options.
struct Plan {
    o: Options,
    uids: Vec<u32>,
    gids: Vec<u32>,
    inbound_all: bool,
    inbound_ports: Vec<u16>,
    inbound_exclude: Vec<u16>,
    outbound_all: bool,
    outbound_cidrs: Vec<Cidr>,
    outbound_exclude_cidrs: Vec<Cidr>,
    outbound_exclude_ports: Vec<u16>,
    outbound_ports: Vec<u16>,
}

impl Plan {
    fn new(o: &Options) -> Result<Plan, FlagError> {
        let inbound_all = o.inbound_ports.trim() == "*";
        let outbound_all = o.outbound_cidrs.trim() == "*";
        Ok(Plan {
            uids: ids(&o.uids, "proxy-uid")?,
            gids: ids(&o.gids, "proxy-gid")?,
            inbound_ports: if inbound_all {
                Vec::new()
            } else {
                ports(&o.inbound_ports, "istio-inbound-ports")?
            },
            inbound_exclude: ports(&o.inbound_exclude_ports, "istio-local-exclude-ports")?,
            outbound_cidrs: if outbound_all {
                Vec::new()
            } else {
                cidrs(&o.outbound_cidrs, "istio-service-cidr")?
            },
            outbound_exclude_cidrs: cidrs(&o.outbound_exclude_cidrs, "istio-service-exclude-cidr")?,
            outbound_exclude_ports: ports(
                &o.outbound_exclude_ports,
                "istio-local-outbound-ports-exclude",
            )?,
            outbound_ports: ports(&o.outbound_ports, "istio-outbound-ports")?,
            inbound_all,
            outbound_all,
            o: o.clone(),
        })
    }
}

/// One family's tools and loopback addresses.
struct Family {
    tool: &'static str,
    v6: bool,
    localhost: &'static str,
    passthrough: &'static str,
    ip_family: &'static str,
}

const V4: Family = Family {
    tool: "iptables",
    v6: false,
    localhost: "127.0.0.1/32",
    passthrough: "127.0.0.6/32",
    ip_family: "inet",
};
const V6: Family = Family {
    tool: "ip6tables",
    v6: true,
    localhost: "::1/128",
    passthrough: "::6/128",
    ip_family: "inet6",
};

/// The commands that install the capture rules, in order.
fn install(p: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    let families: &[&Family] = if p.o.ipv6 { &[&V4, &V6] } else { &[&V4] };
    for f in families {
        install_family(p, f, &mut out);
    }
    out
}

fn install_family(p: &Plan, f: &Family, out: &mut Vec<String>) {
    let o = &p.o;
    let nat = |out: &mut Vec<String>, rule: String| out.push(format!("{} -t nat {rule}", f.tool));
    let mangle =
        |out: &mut Vec<String>, rule: String| out.push(format!("{} -t mangle {rule}", f.tool));
    for chain in [
        "ISTIO_INBOUND",
        "ISTIO_REDIRECT",
        "ISTIO_IN_REDIRECT",
        "ISTIO_OUTPUT",
    ] {
        nat(out, format!("-N {chain}"));
    }
    // Redirect targets.
    nat(
        out,
        format!(
            "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {}",
            o.proxy_port
        ),
    );
    nat(
        out,
        format!(
            "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}",
            o.inbound_port
        ),
    );
    // Inbound.
    let captures_inbound = p.inbound_all || !p.inbound_ports.is_empty();
    if captures_inbound {
        match o.mode {
            Mode::Redirect => {
                nat(out, "-A PREROUTING -p tcp -j ISTIO_INBOUND".into());
                if p.inbound_all {
                    for port in &p.inbound_exclude {
                        nat(
                            out,
                            format!("-A ISTIO_INBOUND -p tcp --dport {port} -j RETURN"),
                        );
                    }
                    nat(out, "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT".into());
                } else {
                    for port in &p.inbound_ports {
                        nat(
                            out,
                            format!("-A ISTIO_INBOUND -p tcp --dport {port} -j ISTIO_IN_REDIRECT"),
                        );
                    }
                }
            }
            Mode::Tproxy => {
                for chain in ["ISTIO_DIVERT", "ISTIO_TPROXY", "ISTIO_INBOUND"] {
                    mangle(out, format!("-N {chain}"));
                }
                mangle(
                    out,
                    format!("-A ISTIO_DIVERT -j MARK --set-mark {}", o.tproxy_mark),
                );
                mangle(out, "-A ISTIO_DIVERT -j ACCEPT".into());
                out.push(format!(
                    "ip -f {} rule add fwmark {} lookup {}",
                    f.ip_family, o.tproxy_mark, o.tproxy_table
                ));
                out.push(format!(
                    "ip -f {} route add local default dev lo table {}",
                    f.ip_family, o.tproxy_table
                ));
                mangle(
                    out,
                    format!(
                        "-A ISTIO_TPROXY ! -d {} -p tcp -j TPROXY --tproxy-mark {}/0xffffffff --on-port {}",
                        f.localhost, o.tproxy_mark, o.inbound_port
                    ),
                );
                mangle(out, "-A PREROUTING -p tcp -j ISTIO_INBOUND".into());
                // Traffic that loops back inside the pod was decided on its way out.
                mangle(out, "-A ISTIO_INBOUND -i lo -j RETURN".into());
                let established =
                    "-p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT";
                if p.inbound_all {
                    for port in &p.inbound_exclude {
                        mangle(
                            out,
                            format!("-A ISTIO_INBOUND -p tcp --dport {port} -j RETURN"),
                        );
                    }
                    mangle(out, format!("-A ISTIO_INBOUND {established}"));
                    mangle(out, "-A ISTIO_INBOUND -p tcp -j ISTIO_TPROXY".into());
                } else {
                    for port in &p.inbound_ports {
                        mangle(
                            out,
                            format!("-A ISTIO_INBOUND -p tcp --dport {port} {established}"),
                        );
                        mangle(
                            out,
                            format!("-A ISTIO_INBOUND -p tcp --dport {port} -j ISTIO_TPROXY"),
                        );
                    }
                }
            }
        }
    }
    // Outbound.
    nat(out, "-A OUTPUT -p tcp -j ISTIO_OUTPUT".into());
    for port in &p.outbound_exclude_ports {
        nat(
            out,
            format!("-A ISTIO_OUTPUT -p tcp --dport {port} -j RETURN"),
        );
    }
    // The proxy's inbound passthrough connections to the app.
    nat(
        out,
        format!("-A ISTIO_OUTPUT -o lo -s {} -j RETURN", f.passthrough),
    );
    for (flag, ids) in [("--uid-owner", &p.uids), ("--gid-owner", &p.gids)] {
        for id in ids {
            // The proxy calling the pod's own IP over lo is inbound traffic for the app.
            if captures_inbound {
                nat(
                    out,
                    format!(
                        "-A ISTIO_OUTPUT -o lo ! -d {} -m owner {flag} {id} -j ISTIO_IN_REDIRECT",
                        f.localhost
                    ),
                );
            }
            // Loopback traffic of the app stays local; the proxy's own traffic is
            // never captured.
            nat(
                out,
                format!("-A ISTIO_OUTPUT -o lo -m owner ! {flag} {id} -j RETURN"),
            );
            nat(
                out,
                format!("-A ISTIO_OUTPUT -m owner {flag} {id} -j RETURN"),
            );
        }
    }
    nat(out, format!("-A ISTIO_OUTPUT -d {} -j RETURN", f.localhost));
    for c in p.outbound_exclude_cidrs.iter().filter(|c| c.v6 == f.v6) {
        nat(out, format!("-A ISTIO_OUTPUT -d {} -j RETURN", c.text));
    }
    for port in &p.outbound_ports {
        nat(
            out,
            format!("-A ISTIO_OUTPUT -p tcp --dport {port} -j ISTIO_REDIRECT"),
        );
    }
    if p.outbound_all {
        nat(out, "-A ISTIO_OUTPUT -j ISTIO_REDIRECT".into());
    } else {
        for c in p.outbound_cidrs.iter().filter(|c| c.v6 == f.v6) {
            nat(
                out,
                format!("-A ISTIO_OUTPUT -d {} -j ISTIO_REDIRECT", c.text),
            );
        }
    }
}

/// The commands that remove everything `install` may have added. Each may fail when
/// there is nothing to remove; that is not an error.
fn uninstall(o: &Options) -> Vec<String> {
    let mut out = Vec::new();
    // Both families always: a cleanup must not depend on flags given at install time.
    for f in [&V4, &V6] {
        let t = f.tool;
        out.push(format!("{t} -t nat -D PREROUTING -p tcp -j ISTIO_INBOUND"));
        out.push(format!("{t} -t nat -D OUTPUT -p tcp -j ISTIO_OUTPUT"));
        out.push(format!(
            "{t} -t mangle -D PREROUTING -p tcp -j ISTIO_INBOUND"
        ));
        // Flush every chain before deleting any: chains refer to each other.
        let nat = [
            "ISTIO_INBOUND",
            "ISTIO_REDIRECT",
            "ISTIO_IN_REDIRECT",
            "ISTIO_OUTPUT",
        ];
        let mangle = ["ISTIO_INBOUND", "ISTIO_DIVERT", "ISTIO_TPROXY"];
        for op in ["-F", "-X"] {
            for chain in nat {
                out.push(format!("{t} -t nat {op} {chain}"));
            }
            for chain in mangle {
                out.push(format!("{t} -t mangle {op} {chain}"));
            }
        }
        out.push(format!(
            "ip -f {} rule del fwmark {} lookup {}",
            f.ip_family, o.tproxy_mark, o.tproxy_table
        ));
        out.push(format!(
            "ip -f {} route flush table {}",
            f.ip_family, o.tproxy_table
        ));
    }
    out
}

/// Why applying failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Flag(#[from] FlagError),
    #[error("`{command}` failed: {reason}")]
    Command { command: String, reason: String },
}

fn run(cmd: &str) -> Result<(), String> {
    let mut parts = cmd.split_whitespace();
    let prog = parts.next().unwrap_or_default();
    let out = Command::new(prog)
        .args(parts)
        .output()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Runs `ringside iptables`: prints (dry run) or applies the rules, or removes them.
/// Returns what was printed or done, one command per line.
pub fn execute(o: &Options) -> Result<String, ApplyError> {
    let plan = Plan::new(o)?;
    let mut text = String::new();
    if o.cleanup {
        for c in uninstall(o) {
            if !o.dry_run {
                // A delete repeats until nothing is left to delete.
                let repeat = c.contains(" -D ");
                while run(&c).is_ok() && repeat {}
            }
            let _ = writeln!(text, "{c}");
        }
        return Ok(text);
    }
    let commands = install(&plan);
    if o.dry_run {
        for c in commands {
            let _ = writeln!(text, "{c}");
        }
        return Ok(text);
    }
    // Idempotent: start from a clean state.
    for c in uninstall(o) {
        let repeat = c.contains(" -D ");
        while run(&c).is_ok() && repeat {}
    }
    for c in commands {
        if let Err(reason) = run(&c) {
            for u in uninstall(o) {
                let repeat = u.contains(" -D ");
                while run(&u).is_ok() && repeat {}
            }
            return Err(ApplyError::Command { command: c, reason });
        }
        let _ = writeln!(text, "{c}");
    }
    Ok(text)
}

#[cfg(test)]
mod tests;
