//! The console's pages: server-rendered HTML (maud escapes every value), English and
//! Latvian, no script. Plain semantic HTML: landmarks, headings, labelled form fields,
//! tables with header cells; the stylesheet is one file from `'self'` (the CSP allows
//! nothing inline).

use maud::{html, Markup, DOCTYPE};
use time::OffsetDateTime;
use varti_store::{AuditEntry, MessageRecord, State};

use super::auth::{LoggedIn, Role};
use super::{enc, BASE};
use crate::api::messages::rfc3339;

/// The page language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lang {
    En,
    Lv,
}

impl Lang {
    pub(crate) fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Lv => "lv",
        }
    }

    pub(crate) fn parse(tag: &str) -> Option<Lang> {
        let tag = tag.trim().to_ascii_lowercase();
        if tag.starts_with("lv") {
            Some(Lang::Lv)
        } else if tag.starts_with("en") {
            Some(Lang::En)
        } else {
            None
        }
    }

    pub(crate) fn text(self) -> &'static Text {
        match self {
            Lang::En => &EN,
            Lang::Lv => &LV,
        }
    }
}

/// The strings of the pages.
pub(crate) struct Text {
    pub(crate) console: &'static str,
    pub(crate) log_in: &'static str,
    pub(crate) log_out: &'static str,
    pub(crate) user: &'static str,
    pub(crate) password: &'static str,
    pub(crate) login_failed: &'static str,
    pub(crate) dashboard: &'static str,
    pub(crate) messages: &'static str,
    pub(crate) audit: &'static str,
    pub(crate) partners: &'static str,
    pub(crate) search: &'static str,
    pub(crate) partner: &'static str,
    pub(crate) since: &'static str,
    pub(crate) until: &'static str,
    pub(crate) state: &'static str,
    pub(crate) direction: &'static str,
    pub(crate) any: &'static str,
    pub(crate) inbound: &'static str,
    pub(crate) outbound: &'static str,
    pub(crate) service: &'static str,
    pub(crate) action: &'static str,
    pub(crate) conversation: &'static str,
    pub(crate) property: &'static str,
    pub(crate) id_prefix: &'static str,
    pub(crate) message_id: &'static str,
    pub(crate) created: &'static str,
    pub(crate) next_page: &'static str,
    pub(crate) none_found: &'static str,
    pub(crate) header: &'static str,
    pub(crate) properties: &'static str,
    pub(crate) payloads: &'static str,
    pub(crate) download: &'static str,
    pub(crate) history: &'static str,
    pub(crate) receipt: &'static str,
    pub(crate) receipt_yes: &'static str,
    pub(crate) error: &'static str,
    pub(crate) actions: &'static str,
    pub(crate) retry_now: &'static str,
    pub(crate) resend: &'static str,
    pub(crate) ack: &'static str,
    pub(crate) done: &'static str,
    pub(crate) instance: &'static str,
    pub(crate) readiness: &'static str,
    pub(crate) queue: &'static str,
    pub(crate) by_state: &'static str,
    pub(crate) per_hour: &'static str,
    pub(crate) sent: &'static str,
    pub(crate) received: &'static str,
    pub(crate) failed: &'static str,
    pub(crate) certificates: &'static str,
    pub(crate) days_left: &'static str,
    pub(crate) last_errors: &'static str,
    pub(crate) actor: &'static str,
    pub(crate) outcome: &'static str,
    pub(crate) subject: &'static str,
    pub(crate) at: &'static str,
    pub(crate) filter: &'static str,
    pub(crate) admin: &'static str,
    pub(crate) reload: &'static str,
    pub(crate) purge: &'static str,
    pub(crate) back: &'static str,
    pub(crate) language: &'static str,
    pub(crate) times_utc: &'static str,
}

const EN: Text = Text {
    console: "Varti console",
    log_in: "Log in",
    log_out: "Log out",
    user: "User name",
    password: "Password",
    login_failed: "The user name or password is wrong.",
    dashboard: "Dashboard",
    messages: "Messages",
    audit: "Audit trail",
    partners: "Partners and certificates",
    search: "Search",
    partner: "Partner",
    since: "From",
    until: "Until",
    state: "State",
    direction: "Direction",
    any: "any",
    inbound: "inbound",
    outbound: "outbound",
    service: "Service",
    action: "Action",
    conversation: "Conversation",
    property: "Property (name=value)",
    id_prefix: "Message id starts with",
    message_id: "Message id",
    created: "Created",
    next_page: "Next page",
    none_found: "No messages match.",
    header: "Header",
    properties: "Properties",
    payloads: "Payloads",
    download: "Download",
    history: "History",
    receipt: "Receipt",
    receipt_yes: "received and stored",
    error: "Error",
    actions: "Actions",
    retry_now: "Retry now",
    resend: "Resend",
    ack: "Acknowledge",
    done: "Done",
    instance: "Instance",
    readiness: "Readiness",
    queue: "Outbound queue",
    by_state: "Messages by state",
    per_hour: "Last 24 hours, per hour",
    sent: "sent",
    received: "received",
    failed: "failed",
    certificates: "Certificates",
    days_left: "days left",
    last_errors: "Last errors",
    actor: "Who",
    outcome: "Outcome",
    subject: "Subject",
    at: "When",
    filter: "Filter",
    admin: "Administration",
    reload: "Reload configuration",
    purge: "Purge now",
    back: "Back",
    language: "Latviski",
    times_utc: "Times are UTC.",
};

const LV: Text = Text {
    console: "Varti konsole",
    log_in: "Pieteikties",
    log_out: "Iziet",
    user: "Lietotājvārds",
    password: "Parole",
    login_failed: "Nepareizs lietotājvārds vai parole.",
    dashboard: "Pārskats",
    messages: "Ziņojumi",
    audit: "Audita žurnāls",
    partners: "Partneri un sertifikāti",
    search: "Meklēt",
    partner: "Partneris",
    since: "No",
    until: "Līdz",
    state: "Stāvoklis",
    direction: "Virziens",
    any: "jebkurš",
    inbound: "ienākošs",
    outbound: "izejošs",
    service: "Pakalpojums",
    action: "Darbība",
    conversation: "Sarakste",
    property: "Īpašība (nosaukums=vērtība)",
    id_prefix: "Ziņojuma id sākas ar",
    message_id: "Ziņojuma id",
    created: "Izveidots",
    next_page: "Nākamā lapa",
    none_found: "Neviens ziņojums neatbilst.",
    header: "Galvene",
    properties: "Īpašības",
    payloads: "Saturs",
    download: "Lejupielādēt",
    history: "Vēsture",
    receipt: "Apliecinājums",
    receipt_yes: "saņemts un saglabāts",
    error: "Kļūda",
    actions: "Darbības",
    retry_now: "Mēģināt tagad",
    resend: "Sūtīt vēlreiz",
    ack: "Apstiprināt",
    done: "Izdarīts",
    instance: "Instance",
    readiness: "Gatavība",
    queue: "Izejošo rinda",
    by_state: "Ziņojumi pa stāvokļiem",
    per_hour: "Pēdējās 24 stundas, pa stundām",
    sent: "nosūtīti",
    received: "saņemti",
    failed: "neizdevās",
    certificates: "Sertifikāti",
    days_left: "dienas atlikušas",
    last_errors: "Pēdējās kļūdas",
    actor: "Kas",
    outcome: "Iznākums",
    subject: "Objekts",
    at: "Kad",
    filter: "Atlasīt",
    admin: "Administrēšana",
    reload: "Pārlādēt konfigurāciju",
    purge: "Tīrīt tagad",
    back: "Atpakaļ",
    language: "English",
    times_utc: "Laiki ir UTC.",
};

/// The stylesheet, served at `/console/static/console.css`.
pub(crate) const CSS: &str = include_str!("console.css");

/// The page frame: header with navigation (when logged in), the content, the language
/// switch.
pub(crate) fn layout(
    lang: Lang,
    title: &str,
    who: Option<&LoggedIn>,
    here: &str,
    body: Markup,
) -> Markup {
    let t = lang.text();
    let other = match lang {
        Lang::En => "lv",
        Lang::Lv => "en",
    };
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · " (t.console) }
                link rel="stylesheet" href={(BASE) "static/console.css"};
            }
            body {
                header {
                    a.brand href=(BASE) { (t.console) }
                    @if let Some(who) = who {
                        nav aria-label=(t.console) {
                            a href=(BASE) { (t.dashboard) }
                            a href={(BASE) "messages"} { (t.messages) }
                            a href={(BASE) "partners"} { (t.partners) }
                            a href={(BASE) "pmodes"} { "PModes" }
                            a href={(BASE) "audit"} { (t.audit) }
                        }
                        form.logout method="post" action={(BASE) "logout"} {
                            span #who { (who.user()) " (" (who.role) ")" }
                            input type="hidden" name="csrf" value=(who.session.csrf);
                            button type="submit" { (t.log_out) }
                        }
                    }
                    a.lang href={(here) (if here.contains('?') { "&" } else { "?" }) "lang=" (other)} lang=(other) { (t.language) }
                }
                main { (body) }
            }
        }
    }
}

/// The login form. `csrf` is the login form's token (also in its cookie).
pub(crate) fn login(lang: Lang, csrf: &str, failed: bool) -> Markup {
    let t = lang.text();
    layout(
        lang,
        t.log_in,
        None,
        BASE,
        html! {
            h1 { (t.log_in) }
            @if failed { p.error role="alert" #login-error { (t.login_failed) } }
            form #login method="post" action={(BASE) "login"} {
                input type="hidden" name="csrf" value=(csrf);
                label for="user" { (t.user) }
                input #user name="user" autocomplete="username" required;
                label for="password" { (t.password) }
                input #password type="password" name="password" autocomplete="current-password" required;
                button type="submit" { (t.log_in) }
            }
        },
    )
}

/// What the dashboard shows.
pub(crate) struct Dashboard {
    pub(crate) party: String,
    pub(crate) instance: String,
    pub(crate) readiness: Option<String>,
    pub(crate) queue_depth: u64,
    /// Per state: count, and whether more were left uncounted.
    pub(crate) by_state: Vec<(State, usize, bool)>,
    /// 24 hours, oldest first: (hour start, sent, received, failed).
    pub(crate) hours: Vec<(OffsetDateTime, usize, usize, usize)>,
    /// (what, subject, days left).
    pub(crate) certificates: Vec<(String, String, i64)>,
    /// The newest messages with an error.
    pub(crate) errors: Vec<MessageRecord>,
}

pub(crate) fn dashboard(lang: Lang, who: &LoggedIn, d: &Dashboard) -> Markup {
    let t = lang.text();
    layout(
        lang,
        t.dashboard,
        Some(who),
        BASE,
        html! {
            h1 { (t.dashboard) }
            section.cards {
                div.card { h2 { (t.instance) } p #instance { (d.party) " · " (d.instance) } }
                div.card {
                    h2 { (t.readiness) }
                    @match &d.readiness {
                        Some(r) => pre #readiness { (r) },
                        None => p { "—" },
                    }
                }
                div.card { h2 { (t.queue) } p.big #queue { (d.queue_depth) } }
            }
            h2 { (t.by_state) }
            table #by-state {
                thead { tr { th scope="col" { (t.state) } th scope="col" { "#" } } }
                tbody {
                    @for (state, n, more) in &d.by_state {
                        tr { td { a href={(BASE) "messages?state=" (state.as_str())} { (state.as_str()) } } td { (n) @if *more { "+" } } }
                    }
                }
            }
            h2 { (t.per_hour) }
            (chart(lang, &d.hours))
            h2 { (t.certificates) }
            table #certificates {
                tbody {
                    @for (what, subject, days) in &d.certificates {
                        tr class=[(*days < 30).then_some("warn")] {
                            th scope="row" { (what) } td { (subject) } td { (days) " " (t.days_left) }
                        }
                    }
                }
            }
            h2 { (t.last_errors) }
            (message_table(lang, &d.errors))
            @if who.role >= Role::Admin {
                h2 { (t.admin) }
                form.inline method="post" action={(BASE) "admin/reload"} {
                    input type="hidden" name="csrf" value=(who.session.csrf);
                    button type="submit" { (t.reload) }
                }
                form.inline method="post" action={(BASE) "admin/purge"} {
                    input type="hidden" name="csrf" value=(who.session.csrf);
                    button type="submit" { (t.purge) }
                }
            }
        },
    )
}

/// Sent, received and failed per hour as bars, drawn on the server as SVG.
fn chart(lang: Lang, hours: &[(OffsetDateTime, usize, usize, usize)]) -> Markup {
    let t = lang.text();
    let max = hours
        .iter()
        .map(|(_, s, r, f)| (*s).max(*r).max(*f))
        .max()
        .unwrap_or(0)
        .max(1);
    let (w, h, slot) = (720.0_f64, 160.0_f64, 30.0_f64);
    let bar = |n: usize| (n as f64 / max as f64) * (h - 20.0);
    html! {
        svg #chart role="img" aria-label=(t.per_hour) viewBox={"0 0 " (w) " " (h + 20.0)} width="100%" {
            @for (i, (at, s, r, f)) in hours.iter().enumerate() {
                @let x = i as f64 * slot;
                rect.sent x=(x + 2.0) y=(h - bar(*s)) width="8" height=(bar(*s)) { title { (at.hour()) ":00 " (t.sent) " " (s) } }
                rect.received x=(x + 11.0) y=(h - bar(*r)) width="8" height=(bar(*r)) { title { (at.hour()) ":00 " (t.received) " " (r) } }
                rect.failed x=(x + 20.0) y=(h - bar(*f)) width="8" height=(bar(*f)) { title { (at.hour()) ":00 " (t.failed) " " (f) } }
                @if i % 3 == 0 { text x=(x + 2.0) y=(h + 15.0) { (format!("{:02}", at.hour())) } }
            }
            text x=(w - 160.0) y="12" { "max " (max) }
        }
        p.legend { span.sent { "■ " (t.sent) } " " span.received { "■ " (t.received) } " " span.failed { "■ " (t.failed) } " · " (t.times_utc) }
    }
}

/// A table of messages, each linking to its page.
pub(crate) fn message_table(lang: Lang, records: &[MessageRecord]) -> Markup {
    let t = lang.text();
    html! {
        @if records.is_empty() {
            p.empty { (t.none_found) }
        } @else {
            table.messages {
                thead { tr {
                    th scope="col" { (t.message_id) } th scope="col" { (t.direction) }
                    th scope="col" { (t.state) } th scope="col" { (t.partner) }
                    th scope="col" { (t.service) " / " (t.action) } th scope="col" { (t.created) }
                } }
                tbody {
                    @for r in records {
                        tr {
                            td { a href={(BASE) "messages/" (enc(&r.meta.message_id))} { (r.meta.message_id) } }
                            td { (r.direction) }
                            td { span class={"state " (r.state.as_str())} { (r.state.as_str()) } }
                            td { (r.partner()) }
                            td { (r.meta.service) " / " (r.meta.action) }
                            td { (short_time(r.created_at)) }
                        }
                    }
                }
            }
        }
    }
}

/// The search form's current values.
#[derive(Debug, Default)]
pub(crate) struct SearchForm {
    pub(crate) values: std::collections::BTreeMap<String, String>,
}

impl SearchForm {
    fn get(&self, key: &str) -> &str {
        self.values.get(key).map(String::as_str).unwrap_or("")
    }
}

pub(crate) fn messages(
    lang: Lang,
    who: &LoggedIn,
    here: &str,
    form: &SearchForm,
    records: &[MessageRecord],
    next: Option<String>,
    error: Option<(String, String)>,
) -> Markup {
    let t = lang.text();
    let field = |name: &str, label: &str, kind: &str| {
        html! {
            div.field {
                label for=(name) { (label) }
                input id=(name) name=(name) type=(kind) value=(form.get(name));
            }
        }
    };
    html! {
        (layout(lang, t.messages, Some(who), here, html! {
            h1 { (t.messages) }
            form #search method="get" action={(BASE) "messages"} {
                (field("partner", t.partner, "text"))
                (field("since", t.since, "datetime-local"))
                (field("until", t.until, "datetime-local"))
                div.field {
                    label for="state" { (t.state) }
                    select #state name="state" {
                        option value="" { (t.any) }
                        @for s in State::ALL {
                            option value=(s.as_str()) selected[form.get("state") == s.as_str()] { (s.as_str()) }
                        }
                    }
                }
                div.field {
                    label for="direction" { (t.direction) }
                    select #direction name="direction" {
                        option value="" { (t.any) }
                        option value="inbound" selected[form.get("direction") == "inbound"] { (t.inbound) }
                        option value="outbound" selected[form.get("direction") == "outbound"] { (t.outbound) }
                    }
                }
                (field("service", t.service, "text"))
                (field("action", t.action, "text"))
                (field("conversation", t.conversation, "text"))
                (field("property", t.property, "text"))
                (field("id_prefix", t.id_prefix, "text"))
                button type="submit" { (t.search) }
                p.hint { (t.times_utc) }
            }
            @if let Some((e, hint)) = error {
                p.error role="alert" { (e) br; (hint) }
            }
            (message_table(lang, records))
            @if let Some(next) = next {
                p { a #next rel="next" href=(next) { (t.next_page) " →" } }
            }
        }))
    }
}

/// One message: header fields, properties, payloads, history, receipt or error, actions.
pub(crate) fn message(lang: Lang, who: &LoggedIn, r: &MessageRecord, done: Option<&str>) -> Markup {
    let t = lang.text();
    let m = &r.meta;
    let id = enc(&m.message_id);
    let here = format!("{BASE}messages/{id}");
    let act = |what: &str, label: &str| {
        html! {
            form.inline method="post" action={(here) "/" (what)} {
                input type="hidden" name="csrf" value=(who.session.csrf);
                button type="submit" #{"do-" (what)} { (label) }
            }
        }
    };
    let outbound = r.direction == varti_store::Direction::Outbound;
    layout(
        lang,
        &m.message_id,
        Some(who),
        &here,
        html! {
            h1 { (t.messages) ": " code #message-id { (m.message_id) } }
            @if let Some(done) = done { p.done role="status" #done { (t.done) ": " (done) } }
            h2 { (t.header) }
            table.fields #header {
                tbody {
                    tr { th scope="row" { (t.direction) } td { (r.direction) } }
                    tr { th scope="row" { (t.state) } td #state { span class={"state " (r.state.as_str())} { (r.state.as_str()) } } }
                    tr { th scope="row" { "From" } td { (m.from_party) } }
                    tr { th scope="row" { "To" } td { (m.to_party) } }
                    tr { th scope="row" { (t.service) } td { (m.service) } }
                    tr { th scope="row" { (t.action) } td { (m.action) } }
                    tr { th scope="row" { (t.conversation) } td { (m.conversation_id) } }
                    @if let Some(rf) = &m.ref_to_message_id { tr { th scope="row" { "RefToMessageId" } td { (rf) } } }
                    tr { th scope="row" { "PMode" } td { (m.pmode_id) } }
                    tr { th scope="row" { "Owner" } td { (m.owner) } }
                    tr { th scope="row" { "Attempts" } td { (r.attempts) } }
                    @if let Some(at) = r.next_attempt_at { tr { th scope="row" { "Next attempt" } td { (rfc3339(at)) } } }
                    tr { th scope="row" { (t.created) } td { (rfc3339(r.created_at)) } }
                }
            }
            @if !m.properties.is_empty() {
                h2 { (t.properties) }
                table.fields #properties { tbody {
                    @for p in &m.properties { tr { th scope="row" { (p.name) } td { (p.value) } } }
                } }
            }
            h2 { (t.payloads) }
            table #payloads {
                thead { tr { th scope="col" { "#" } th scope="col" { "Content-ID" } th scope="col" { "MIME" } th scope="col" { "bytes" } th {} } }
                tbody {
                    @for (i, p) in m.payloads.iter().enumerate() {
                        tr {
                            td { (i) } td { (p.content_id) } td { (p.mime_type) } td { (p.stored.size) }
                            td {
                                @if who.role >= Role::Operator && r.payloads_purged_at.is_none() {
                                    a.download href={(here) "/payloads/" (i)} download { (t.download) }
                                }
                            }
                        }
                    }
                }
            }
            h2 { (t.receipt) " / " (t.error) }
            @if r.receipt.is_some() { p #receipt { (t.receipt) ": " (t.receipt_yes) } }
            @if let Some(e) = &r.last_error { p.error #last-error { (t.error) ": " (e) } }
            h2 { (t.history) }
            table #history {
                thead { tr { th scope="col" { (t.at) } th scope="col" { "event" } th scope="col" { (t.state) } th scope="col" { "note" } } }
                tbody {
                    @for h in &r.history {
                        tr { td { (rfc3339(h.at)) } td { (h.event.as_str()) } td { (h.from.as_str()) " → " (h.to.as_str()) } td { (h.note.as_deref().unwrap_or("")) } }
                    }
                }
            }
            @if who.role >= Role::Operator {
                h2 { (t.actions) }
                @if outbound && r.state == State::WaitingForRetry { (act("retry", t.retry_now)) }
                @if outbound && r.state == State::Failed { (act("resend", t.resend)) }
                @if !outbound && matches!(r.state, State::Received | State::Delivered) { (act("ack", t.ack)) }
            }
        },
    )
}

pub(crate) fn audit(
    lang: Lang,
    who: &LoggedIn,
    here: &str,
    form: &SearchForm,
    entries: &[AuditEntry],
    next: Option<String>,
) -> Markup {
    let t = lang.text();
    layout(
        lang,
        t.audit,
        Some(who),
        here,
        html! {
            h1 { (t.audit) }
            form #audit-filter method="get" action={(BASE) "audit"} {
                div.field { label for="since" { (t.since) } input #since name="since" type="datetime-local" value=(form.get("since")); }
                div.field { label for="actor" { (t.actor) } input #actor name="actor" value=(form.get("actor")); }
                div.field { label for="action" { (t.action) } input #action name="action" value=(form.get("action")); }
                div.field { label for="subject" { (t.subject) } input #subject name="subject" value=(form.get("subject")); }
                button type="submit" { (t.filter) }
                p.hint { (t.times_utc) }
            }
            table #audit {
                thead { tr { th scope="col" { "#" } th scope="col" { (t.at) } th scope="col" { (t.actor) } th scope="col" { (t.action) } th scope="col" { (t.subject) } th scope="col" { (t.outcome) } th scope="col" { "details" } } }
                tbody {
                    @for e in entries {
                        tr {
                            td { (e.seq) } td { (short_time(e.at)) } td { (e.actor) } td { (e.action) }
                            td { (e.subject) } td { span class={"outcome " (e.outcome.as_str())} { (e.outcome.as_str()) } }
                            td { code { (e.details.to_string()) } }
                        }
                    }
                }
            }
            @if let Some(next) = next { p { a #next rel="next" href=(next) { (t.next_page) " →" } } }
        },
    )
}

/// One partner (a party of the PModes): its endpoints, certificates, last exchange.
pub(crate) struct PartnerView {
    pub(crate) party: String,
    pub(crate) endpoints: Vec<String>,
    /// (use, subject, issuer, not after, key, days left)
    pub(crate) certificates: Vec<CertView>,
    pub(crate) last: Option<MessageRecord>,
}

/// What a certificate shows.
pub(crate) struct CertView {
    pub(crate) usage: String,
    pub(crate) subject: String,
    pub(crate) issuer: String,
    pub(crate) not_after: String,
    pub(crate) key: String,
    pub(crate) days_left: i64,
}

fn cert_table(certs: &[CertView], t: &Text) -> Markup {
    html! {
        table.certs {
            thead { tr { th {} th scope="col" { "Subject" } th scope="col" { "Issuer" } th scope="col" { "Not after" } th scope="col" { "Key" } th scope="col" { (t.days_left) } } }
            tbody {
                @for c in certs {
                    tr class=[(c.days_left < 30).then_some("warn")] {
                        th scope="row" { (c.usage) } td { (c.subject) } td { (c.issuer) } td { (c.not_after) } td { (c.key) } td { (c.days_left) }
                    }
                }
            }
        }
    }
}

pub(crate) fn partners(
    lang: Lang,
    who: &LoggedIn,
    own: &[CertView],
    partners: &[PartnerView],
) -> Markup {
    let t = lang.text();
    layout(
        lang,
        t.partners,
        Some(who),
        &format!("{BASE}partners"),
        html! {
            h1 { (t.partners) }
            h2 { "Own keys" }
            (cert_table(own, t))
            @for p in partners {
                section.partner {
                    h2 { (p.party) }
                    @for e in &p.endpoints { p { "Endpoint: " code { (e) } } }
                    (cert_table(&p.certificates, t))
                    @if let Some(r) = &p.last {
                        p { "Last exchange: " a href={(BASE) "messages/" (enc(&r.meta.message_id))} { (short_time(r.created_at)) " · " (r.direction) " · " (r.state.as_str()) } }
                    }
                }
            }
        },
    )
}

/// One leg of the PModes as the PModes page shows it.
pub(crate) struct LegView {
    pub(crate) process_leg: String,
    pub(crate) file: String,
    pub(crate) mep: String,
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) service: String,
    pub(crate) action: String,
    pub(crate) security: String,
}

/// The PModes in force: parties, legs, and the diagnostics of the files as they are now.
pub(crate) fn pmodes(
    lang: Lang,
    who: &LoggedIn,
    parties: &[(String, String)],
    legs: &[LegView],
    diagnostics: &[String],
    generation: u64,
) -> Markup {
    let t = lang.text();
    layout(
        lang,
        "PModes",
        Some(who),
        &format!("{BASE}pmodes"),
        html! {
            h1 { "PModes" }
            p { "Generation " (generation) }
            h2 { (t.partners) }
            table #parties { tbody { @for (name, endpoint) in parties { tr { th scope="row" { (name) } td { (endpoint) } } } } }
            h2 { "Legs" }
            table #legs {
                thead { tr { th scope="col" { "Process / leg" } th scope="col" { "File" } th scope="col" { "MEP" } th scope="col" { "From" } th scope="col" { "To" } th scope="col" { (t.service) } th scope="col" { (t.action) } th scope="col" { "Security" } } }
                tbody {
                    @for l in legs {
                        tr { td { (l.process_leg) } td { (l.file) } td { (l.mep) } td { (l.from) } td { (l.to) } td { (l.service) } td { (l.action) } td { (l.security) } }
                    }
                }
            }
            h2 { "pmode check" }
            @if diagnostics.is_empty() {
                p #diagnostics { "No problems." }
            } @else {
                ul #diagnostics { @for d in diagnostics { li { code { (d) } } } }
            }
            @if who.role >= Role::Admin {
                form.inline method="post" action={(BASE) "admin/reload"} {
                    input type="hidden" name="csrf" value=(who.session.csrf);
                    button type="submit" { (t.reload) }
                }
            }
        },
    )
}

/// An error page: what is wrong and what to do.
pub(crate) fn error(
    lang: Lang,
    who: Option<&LoggedIn>,
    status: u16,
    e: &str,
    hint: &str,
) -> Markup {
    let t = lang.text();
    layout(
        lang,
        t.error,
        who,
        BASE,
        html! {
            h1 { (t.error) " " (status) }
            p.error role="alert" #error { (e) }
            p { (hint) }
            p { a href=(BASE) { (t.back) } }
        },
    )
}

fn short_time(t: OffsetDateTime) -> String {
    let s = rfc3339(t);
    // 2026-12-05T20:51:36.123Z → 2026-12-05 20:51:36
    s.get(..19).unwrap_or(&s).replace('T', " ")
}
