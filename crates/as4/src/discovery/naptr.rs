//! U-NAPTR (RFC 4848) records to the SMP's base URL.
//!
//! BDXL 1.6 §1.4.3: the SMP is published as `NAPTR order pref "U" "meta:smp"
//! "!.*!https://smp.example/path!" ""`. Records are kept when their flag is `U` and
//! their service is one the network accepts (compared ignoring case: `Meta:SMP` is the
//! same service); they are tried by order, then preference, and the first whose
//! substitution expression yields an `http(s)` URL wins.

use super::DiscoveryError;

/// The NAPTR service of an SMP (BDXL 1.6 §1.4.3), compared ignoring case.
pub const SMP_NAPTR_SERVICE: &str = "meta:smp";

/// A NAPTR record's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naptr {
    /// Processing order (lowest first).
    pub order: u16,
    /// Preference among equal orders (lowest first).
    pub preference: u16,
    /// The flags (`U`: terminal, the result is a URI).
    pub flags: String,
    /// The service, e.g. `Meta:SMP`.
    pub service: String,
    /// The substitution expression (`!ere!replacement!flags`).
    pub regexp: String,
    /// The replacement name (`.` when none).
    pub replacement: String,
}

/// The SMP base URL the NAPTR `records` of `name` give, for any of `services`.
pub fn smp_url_from_naptr(
    name: &str,
    records: &[Naptr],
    services: &[&str],
) -> Result<String, DiscoveryError> {
    let mut sorted: Vec<&Naptr> = records.iter().collect();
    sorted.sort_by_key(|r| (r.order, r.preference));
    let mut skipped = Vec::new();
    for r in sorted {
        if !r.flags.eq_ignore_ascii_case("u") {
            skipped.push(format!("flags `{}` are not `U`", r.flags));
            continue;
        }
        if !services.iter().any(|s| s.eq_ignore_ascii_case(&r.service)) {
            skipped.push(format!(
                "service `{}` is not {}",
                r.service,
                services.join(" or ")
            ));
            continue;
        }
        match substitute(name, &r.regexp) {
            Ok(url) if url.starts_with("https://") || url.starts_with("http://") => return Ok(url),
            Ok(url) => skipped.push(format!("`{url}` is not an http(s) URL")),
            Err(e) => skipped.push(format!("regexp `{}`: {e}", r.regexp)),
        }
    }
    Err(DiscoveryError::NoSmpRecord {
        name: name.to_owned(),
        detail: if skipped.is_empty() {
            "no NAPTR record".into()
        } else {
            skipped.join("; ")
        },
    })
}

/// Applies an RFC 3402 substitution expression (`<d>ere<d>replacement<d>flags`, `d` the
/// delimiter; the only flag is `i`, case-insensitive) to `aus`: the first match of the
/// POSIX extended regular expression is replaced, `\1`…`\9` in the replacement standing
/// for its groups. The result is the whole rewritten string.
pub fn substitute(aus: &str, expression: &str) -> Result<String, String> {
    let mut chars = expression.chars();
    let delim = chars.next().ok_or("the regexp is empty")?;
    if delim.is_ascii_digit() || delim == '\\' || delim == 'i' {
        return Err(format!("`{delim}` cannot be the delimiter"));
    }
    // Split on unescaped delimiters; `\<delim>` stands for the delimiter itself.
    let mut parts = vec![String::new()];
    let mut escaped = false;
    for c in chars {
        let part = parts.last_mut().expect("one part at least");
        if escaped {
            if c != delim {
                part.push('\\');
            }
            part.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == delim {
            parts.push(String::new());
        } else {
            part.push(c);
        }
    }
    if escaped {
        return Err("it ends with a lone backslash".into());
    }
    let [ere, replacement, flags] = <[String; 3]>::try_from(parts)
        .map_err(|p| format!("it has {} parts, not ere, replacement and flags", p.len()))?;
    let case_insensitive = match flags.as_str() {
        "" => false,
        "i" => true,
        other => return Err(format!("unknown flag `{other}`")),
    };
    let re = regex::RegexBuilder::new(&ere)
        .case_insensitive(case_insensitive)
        .size_limit(1 << 16)
        .build()
        .map_err(|e| format!("the expression does not compile: {e}"))?;
    let caps = re
        .captures(aus)
        .ok_or_else(|| format!("the expression does not match `{aus}`"))?;
    let mut out = String::new();
    let whole = caps.get(0).expect("group 0 exists");
    out.push_str(&aus[..whole.start()]);
    let mut rc = replacement.chars();
    while let Some(c) = rc.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match rc.next() {
            Some(d @ '1'..='9') => {
                let n = d.to_digit(10).expect("a digit") as usize;
                let group = caps
                    .get(n)
                    .ok_or_else(|| format!("\\{n} names no group of the expression"))?;
                out.push_str(group.as_str());
            }
            Some(other) => out.push(other),
            None => return Err("the replacement ends with a lone backslash".into()),
        }
    }
    out.push_str(&aus[whole.end()..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(order: u16, pref: u16, flags: &str, service: &str, regexp: &str) -> Naptr {
        Naptr {
            order,
            preference: pref,
            flags: flags.into(),
            service: service.into(),
            regexp: regexp.into(),
            replacement: ".".into(),
        }
    }

    #[test]
    fn the_bdxl_example_record_gives_its_url() {
        let name = "lzmedsmz.iso6523-actorid-upis.bdxl.example.com";
        let r = rec(
            100,
            10,
            "U",
            "meta:smp",
            "!.*!https://www.anotherexample.com/smp/prod!",
        );
        assert_eq!(
            smp_url_from_naptr(name, &[r], &[SMP_NAPTR_SERVICE]).unwrap(),
            "https://www.anotherexample.com/smp/prod"
        );
    }

    #[test]
    fn records_are_filtered_by_flag_and_service_then_ordered() {
        let records = [
            rec(20, 10, "U", "Meta:SMP", "!.*!https://late.example/!"),
            rec(10, 10, "U", "Meta:CPPA", "!.*!https://cppa.example/!"),
            rec(10, 12, "S", "Meta:SMP", ""),
            rec(10, 15, "U", "META:SMP", "!.*!https://first.example/!"),
        ];
        assert_eq!(
            smp_url_from_naptr("n", &records, &[SMP_NAPTR_SERVICE]).unwrap(),
            "https://first.example/"
        );
        match smp_url_from_naptr("n", &records[1..3], &[SMP_NAPTR_SERVICE]) {
            Err(DiscoveryError::NoSmpRecord { detail, .. }) => {
                assert!(detail.contains("service `Meta:CPPA`"), "{detail}");
                assert!(detail.contains("flags `S`"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn substitution_groups_escapes_and_case_flag() {
        assert_eq!(
            substitute(
                "lv.dsd.x",
                r"!^([a-z]+)\.(dsd)\..*$!https://\2.\1.example/x\!y!"
            )
            .unwrap(),
            "https://dsd.lv.example/x!y"
        );
        assert_eq!(
            substitute("LV.DSD", "#^lv\\.(.*)$#https://h/\\1#i").unwrap(),
            "https://h/DSD"
        );
        assert!(substitute("a", "!.*!x!g")
            .unwrap_err()
            .contains("unknown flag"));
    }
}
