//! The preview pages: HTML in English and Latvian, built as strings with every value
//! escaped. Plain semantic HTML (landmarks, headings, labelled buttons, a visible focus
//! ring) so keyboard and screen-reader users get the same page; no script.

use std::io::BufReader;
use std::path::Path;

use quick_xml::events::Event;

/// The page language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) enum Lang {
    /// English.
    En,
    /// Latvian.
    Lv,
}

impl Lang {
    /// From a language tag (`lv`, `lv-LV`, `en`…); English for anything else.
    pub(super) fn from_tag(tag: &str) -> Lang {
        if tag.trim().to_ascii_lowercase().starts_with("lv") {
            Lang::Lv
        } else {
            Lang::En
        }
    }

    /// From an Accept-Language header: the first of `lv` or `en` it lists.
    pub(super) fn from_accept_language(header: &str) -> Option<Lang> {
        header.split(',').find_map(|item| {
            let tag = item
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if tag.starts_with("lv") {
                Some(Lang::Lv)
            } else if tag.starts_with("en") {
                Some(Lang::En)
            } else {
                None
            }
        })
    }

    /// The ISO 639-1 code.
    pub(super) fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Lv => "lv",
        }
    }
}

/// The strings of the pages.
pub(super) struct Text {
    pub title: &'static str,
    pub asked_by: &'static str,
    pub procedure: &'static str,
    pub intro: &'static str,
    pub evidence: &'static str,
    pub open_file: &'static str,
    pub download_xml: &'static str,
    pub decide: &'static str,
    pub approve: &'static str,
    pub cancel: &'static str,
    pub approved: &'static str,
    pub cancelled: &'static str,
    pub back: &'static str,
    pub expired_title: &'static str,
    pub expired: &'static str,
    pub used_title: &'static str,
    pub used: &'static str,
    pub wrong_person_title: &'static str,
    pub wrong_person: &'static str,
    pub invalid_title: &'static str,
    pub invalid: &'static str,
    pub login_failed_title: &'static str,
    pub login_failed: &'static str,
    pub language: &'static str,
}

const EN: Text = Text {
    title: "Preview your evidence",
    asked_by: "Requested by",
    procedure: "Procedure",
    intro: "An authority in another country has asked for the evidence below. Nothing is sent until you decide. Check it, then share it or cancel.",
    evidence: "Evidence",
    open_file: "Open the file",
    download_xml: "Download the original XML",
    decide: "Your decision",
    approve: "Share this evidence",
    cancel: "Cancel, do not share",
    approved: "Thank you. The evidence will be sent to the authority that asked for it.",
    cancelled: "The request was cancelled. Nothing was sent.",
    back: "Return to the portal",
    expired_title: "This link has expired",
    expired: "For your protection the link works for a short time only. Return to the portal and request the evidence again.",
    used_title: "This link has already been used",
    used: "A preview link works once, in the browser where it was first opened. Return to the portal to get a new one.",
    wrong_person_title: "This preview is for someone else",
    wrong_person: "You logged in as a different person from the one this evidence is about, so it is not shown. If this is your evidence, log in with your own eID; otherwise close this page.",
    invalid_title: "This link is not valid",
    invalid: "Check that you followed the whole link from the portal, or request the evidence again.",
    login_failed_title: "Login did not complete",
    login_failed: "Your identity could not be confirmed. Follow the link from the portal again.",
    language: "Latviski",
};

const LV: Text = Text {
    title: "Priekšskatiet savu apliecinājumu",
    asked_by: "Pieprasītājs",
    procedure: "Procedūra",
    intro: "Iestāde citā valstī ir pieprasījusi zemāk redzamo apliecinājumu. Nekas netiek nosūtīts, kamēr jūs neizlemjat. Pārbaudiet to un tad kopīgojiet vai atceliet.",
    evidence: "Apliecinājums",
    open_file: "Atvērt failu",
    download_xml: "Lejupielādēt oriģinālo XML",
    decide: "Jūsu lēmums",
    approve: "Kopīgot šo apliecinājumu",
    cancel: "Atcelt, nekopīgot",
    approved: "Paldies. Apliecinājums tiks nosūtīts iestādei, kas to pieprasīja.",
    cancelled: "Pieprasījums ir atcelts. Nekas netika nosūtīts.",
    back: "Atgriezties portālā",
    expired_title: "Šīs saites derīguma termiņš ir beidzies",
    expired: "Jūsu drošībai saite darbojas tikai īsu laiku. Atgriezieties portālā un pieprasiet apliecinājumu vēlreiz.",
    used_title: "Šī saite jau ir izmantota",
    used: "Priekšskatījuma saite darbojas vienu reizi, pārlūkā, kurā tā pirmo reizi atvērta. Atgriezieties portālā, lai saņemtu jaunu.",
    wrong_person_title: "Šis priekšskatījums ir paredzēts citai personai",
    wrong_person: "Jūs pieteicāties kā cita persona, nevis tā, par kuru ir šis apliecinājums, tāpēc tas netiek rādīts. Ja tas ir jūsu apliecinājums, piesakieties ar savu eID; citādi aizveriet šo lapu.",
    invalid_title: "Šī saite nav derīga",
    invalid: "Pārbaudiet, vai atvērāt visu saiti no portāla, vai pieprasiet apliecinājumu vēlreiz.",
    login_failed_title: "Pieteikšanās netika pabeigta",
    login_failed: "Jūsu identitāti neizdevās apstiprināt. Atveriet saiti no portāla vēlreiz.",
    language: "English",
};

/// The strings in `lang`.
pub(super) fn text(lang: Lang) -> &'static Text {
    match lang {
        Lang::En => &EN,
        Lang::Lv => &LV,
    }
}

/// Escapes text for HTML content and attribute values.
pub(super) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:60rem;margin:0 auto;padding:1rem;line-height:1.5;color:#111}\
button{font-size:1rem;padding:.6rem 1.2rem;margin:.3rem .6rem .3rem 0;border-radius:.3rem;border:2px solid #1d4f91;background:#fff;color:#1d4f91;cursor:pointer}\
button.primary{background:#1d4f91;color:#fff}\
:focus-visible{outline:3px solid #d35400;outline-offset:2px}\
iframe{width:100%;height:32rem;border:1px solid #999}\
dl.xml{border-left:3px solid #ccc;padding-left:1rem}dl.xml dt{font-weight:600}dl.xml dd{margin:0 0 .4rem 1rem}";

/// A whole page.
pub(super) fn page(lang: Lang, title: &str, main: &str, lang_switch: Option<&str>) -> String {
    let switch = lang_switch
        .map(|href| {
            let other = match lang {
                Lang::En => "lv",
                Lang::Lv => "en",
            };
            format!(
                r#"<nav aria-label="Language"><a href="{}" hreflang="{other}" lang="{other}">{}</a></nav>"#,
                escape(href),
                text(lang).language
            )
        })
        .unwrap_or_default();
    format!(
        r#"<!DOCTYPE html>
<html lang="{code}"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title><style>{STYLE}</style></head>
<body>{switch}<main id="main"><h1>{title}</h1>
{main}
</main></body></html>"#,
        code = lang.code(),
        title = escape(title),
    )
}

/// A page with a heading and one paragraph (errors, outcomes), with an optional link back.
pub(super) fn message_page(lang: Lang, title: &str, body: &str, back: Option<&str>) -> String {
    let back = back
        .map(|url| {
            format!(
                r#"<p><a id="back" href="{}">{}</a></p>"#,
                escape(url),
                text(lang).back
            )
        })
        .unwrap_or_default();
    page(
        lang,
        title,
        &format!(
            r#"<p id="message" role="status">{}</p>{back}"#,
            escape(body)
        ),
        None,
    )
}

/// One evidence as shown on the page.
pub(super) struct ShownEvidence<'a> {
    /// Its title.
    pub title: &'a str,
    /// Its media type.
    pub media_type: &'a str,
    /// Its URL on this server.
    pub href: String,
    /// Its file (XML is rendered from it).
    pub path: &'a Path,
    /// Whether a stylesheet made HTML of it (served at `{href}/view`).
    pub transformed: bool,
}

/// The evidence page with the decision form.
#[allow(clippy::too_many_arguments)]
pub(super) fn evidence_page(
    lang: Lang,
    requester: &str,
    procedure: Option<&str>,
    evidences: &[ShownEvidence<'_>],
    decision_action: &str,
    form_token: &str,
    lang_switch: &str,
) -> String {
    let t = text(lang);
    let mut main = format!(
        r#"<p>{intro}</p><dl id="who"><dt>{asked}</dt><dd id="requester">{requester}</dd>"#,
        intro = escape(t.intro),
        asked = t.asked_by,
        requester = escape(requester)
    );
    if let Some(p) = procedure {
        main.push_str(&format!(
            r#"<dt>{}</dt><dd id="procedure">{}</dd>"#,
            t.procedure,
            escape(p)
        ));
    }
    main.push_str("</dl>");
    for (i, e) in evidences.iter().enumerate() {
        let heading_id = format!("evidence-{i}-title");
        main.push_str(&format!(
            r#"<section class="evidence" aria-labelledby="{heading_id}"><h2 id="{heading_id}">{}: {}</h2>"#,
            t.evidence,
            escape(e.title)
        ));
        let is_xml = e.media_type.ends_with("/xml") || e.media_type.ends_with("+xml");
        if e.media_type == "application/pdf" {
            main.push_str(&format!(
                r#"<iframe id="evidence-{i}" src="{href}" title="{title}"></iframe>"#,
                href = escape(&e.href),
                title = escape(e.title)
            ));
        } else if is_xml && e.transformed {
            // The register's stylesheet made HTML of it: shown in a frame that may run
            // nothing (the page it loads has its own CSP with `sandbox` too).
            main.push_str(&format!(
                r#"<iframe id="evidence-{i}" class="transformed" sandbox="" src="{href}/view" title="{title}"></iframe>
<p><a id="evidence-{i}-xml" href="{href}?download=1" download>{download}</a></p>"#,
                href = escape(&e.href),
                title = escape(e.title),
                download = t.download_xml
            ));
        } else if is_xml {
            if let Some(html) = render_xml(e.path) {
                main.push_str(&format!(r#"<div id="evidence-{i}">{html}</div>"#));
            }
        }
        main.push_str(&format!(
            r#"<p><a href="{}" target="_blank" rel="noopener">{} ({})</a></p></section>"#,
            escape(&e.href),
            t.open_file,
            escape(e.media_type)
        ));
    }
    main.push_str(&format!(
        r#"<form method="post" action="{action}"><fieldset><legend>{decide}</legend><input type="hidden" name="token" value="{token}">
<button type="submit" class="primary" id="approve" name="decision" value="approve">{approve}</button>
<button type="submit" id="cancel" name="decision" value="cancel">{cancel}</button></fieldset></form>"#,
        action = escape(decision_action),
        decide = t.decide,
        token = escape(form_token),
        approve = t.approve,
        cancel = t.cancel
    ));
    page(lang, t.title, &main, Some(lang_switch))
}

/// Largest XML file rendered on the page (bigger ones are offered as a download only).
const MAX_RENDERED_XML: u64 = 2 * 1024 * 1024;

/// An XML document as nested definition lists: element names as terms, text as values,
/// attributes as `name = value` lines. Readable without knowing XML. `None` when the file
/// is too big or not well-formed (the download link remains).
pub(super) fn render_xml(path: &Path) -> Option<String> {
    let file = std::fs::File::open(path).ok()?;
    if file.metadata().ok()?.len() > MAX_RENDERED_XML {
        return None;
    }
    let mut reader = quick_xml::Reader::from_reader(BufReader::new(file));
    reader.config_mut().trim_text(true);
    let mut out = String::from(r#"<dl class="xml">"#);
    let mut buf = Vec::new();
    let mut depth = 0usize;
    loop {
        match reader.read_event_into(&mut buf).ok()? {
            Event::Start(e) => {
                out.push_str(&format!(
                    "<dt>{}</dt><dd>{}<dl class=\"xml\">",
                    escape(&label(e.local_name().as_ref())),
                    attributes(&e)
                ));
                depth += 1;
            }
            Event::Empty(e) => {
                out.push_str(&format!(
                    "<dt>{}</dt><dd>{}</dd>",
                    escape(&label(e.local_name().as_ref())),
                    attributes(&e)
                ));
            }
            Event::Text(t) => {
                let text = t.unescape().ok()?;
                if !text.trim().is_empty() {
                    out.push_str(&format!("<dd>{}</dd>", escape(text.trim())));
                }
            }
            Event::CData(t) => {
                out.push_str(&format!(
                    "<dd>{}</dd>",
                    escape(&String::from_utf8_lossy(&t))
                ));
            }
            Event::End(_) => {
                out.push_str("</dl></dd>");
                depth = depth.checked_sub(1)?;
            }
            // A DOCTYPE could declare entities: such a document is not rendered.
            Event::DocType(_) => return None,
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if depth != 0 {
        return None;
    }
    out.push_str("</dl>");
    Some(out)
}

fn label(local: &[u8]) -> String {
    String::from_utf8_lossy(local).into_owned()
}

fn attributes(e: &quick_xml::events::BytesStart<'_>) -> String {
    let mut out = String::new();
    for a in e.attributes().flatten() {
        let key = a.key.local_name();
        let key = String::from_utf8_lossy(key.as_ref()).into_owned();
        if key == "xmlns" || a.key.as_ref().starts_with(b"xmlns:") {
            continue;
        }
        let value = a
            .unescape_value()
            .map(|v| v.into_owned())
            .unwrap_or_default();
        out.push_str(&format!(
            r#"<span class="attr">{} = {}</span><br>"#,
            escape(&key),
            escape(&value)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_is_rendered_as_an_outline_with_values_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.xml");
        std::fs::write(
            &path,
            r#"<?xml version="1.0"?><d:Diploma xmlns:d="urn:x" year="2020"><d:Holder>Anna &lt;B&gt;</d:Holder><d:Grade/></d:Diploma>"#,
        )
        .unwrap();
        let html = render_xml(&path).unwrap();
        assert!(html.contains("<dt>Diploma</dt>"), "{html}");
        assert!(html.contains("year = 2020"), "{html}");
        assert!(html.contains("<dd>Anna &lt;B&gt;</dd>"), "{html}");
        assert!(html.contains("<dt>Grade</dt>"), "{html}");
        assert!(!html.contains("xmlns"), "{html}");

        std::fs::write(&path, r#"<!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>"#).unwrap();
        assert!(render_xml(&path).is_none(), "a DOCTYPE is not rendered");
        std::fs::write(&path, "<a><b></a>").unwrap();
        assert!(render_xml(&path).is_none(), "malformed XML is not rendered");
    }

    #[test]
    fn languages_come_from_tags_and_accept_language() {
        assert_eq!(Lang::from_tag("lv-LV"), Lang::Lv);
        assert_eq!(Lang::from_tag("de"), Lang::En);
        assert_eq!(
            Lang::from_accept_language("de-DE, lv;q=0.8, en;q=0.5"),
            Some(Lang::Lv)
        );
        assert_eq!(Lang::from_accept_language("fr"), None);
        assert_eq!(
            escape(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
