//! CIDR ranges (`CidrRange`, `address_prefix` + `prefix_len`) → [`Cidr`].

use std::net::IpAddr;

use crate::model::chain::Cidr;
use crate::proto::envoy::config::core::v3 as core;

use super::{err, ConvertError};

pub(crate) fn cidr(
    addr: &str,
    len: Option<u32>,
    res: &str,
    path: &str,
) -> Result<Cidr, ConvertError> {
    let ip: IpAddr = addr.parse().map_err(|_| {
        err(
            res,
            format!("{path}.address_prefix"),
            format!("'{addr}' is not an IP address"),
        )
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = len.unwrap_or(max);
    if len > max {
        return Err(err(
            res,
            format!("{path}.prefix_len"),
            format!("{len} is longer than the address ({max} bits)"),
        ));
    }
    Ok(Cidr {
        addr: ip,
        len: len as u8,
    })
}

pub(crate) fn cidrs(
    ranges: &[core::CidrRange],
    res: &str,
    path: &str,
) -> Result<Vec<Cidr>, ConvertError> {
    ranges
        .iter()
        .enumerate()
        .map(|(i, r)| {
            cidr(
                &r.address_prefix,
                r.prefix_len,
                res,
                &format!("{path}[{i}]"),
            )
        })
        .collect()
}
