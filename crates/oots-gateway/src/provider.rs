//! The provider side: an evidence request received over AS4 is validated, routed by its
//! evidence type to a data service connector, and answered over AS4.
//!
//! The answer always goes back to the sending access point on the same conversation, with
//! `RefToMessageId` naming the request message and the four-corner properties swapped
//! (our `originalSender` is the request's `finalRecipient`):
//!
//! | what happened | answer |
//! |---|---|
//! | evidence | `ExecuteQueryResponse`: the EDM response, then each file, referenced by `cid:` |
//! | the request breaks the EDM model, XSD or Schematron | EDM:ERR:0003, `detail` = the rule ids |
//! | its `originalSender` is not the EvidenceRequester (`ER`) it names, or it names an intermediary platform (`IP`) other than the one `[[oots.requester_platforms]]` configures for the sending gateway (or one configured for another gateway) | EDM:ERR:0003, `detail` naming both sides; no register is called |
//! | its `finalRecipient` and EvidenceProvider agent name different providers | EDM:ERR:0003 |
//! | no connector serves the provider it names | EDM:ERR:0006 (reference cannot be resolved) |
//! | no connector for its evidence type (at that provider) | EDM:ERR:0007 (capability not supported) |
//! | the register finds nothing / no unique match | EDM:ERR:0004 |
//! | the register refuses the request | EDM:ERR:0003 |
//! | the register timed out on every attempt | EDM:ERR:0005 |
//! | the register is unreachable or failing | EDM:ERR:0008 |
//!
//! # Many providers on one gateway (intermediary platform)
//!
//! A request is routed by the provider it names — its `finalRecipient` property and its
//! EvidenceProvider agent, which must agree — and then by evidence type: a connector with
//! `provider` serves only that provider (and wins over one without, which serves any).
//! A request's `originalSender` must be the evidence requester it names (the TDD's ebMS
//! header rules are reported as EDM:ERR:0003, not as ebMS errors); a gateway that is an
//! intermediary platform may speak for its portals (`originalSender` = the platform, named
//! as the `IP` agent) once `[[oots.requester_platforms]]` says which gateway it is.
//! The answer's `originalSender` is that provider; an error about a provider this gateway
//! does not serve comes from the platform itself (`[oots] platform`, else this access
//! point's party) as the error provider and `originalSender`.
//!
//! Once the requester's access point acknowledged the answer, the evidence is handed
//! over: the answer's payloads and those of the request are purged after
//! `oots.evidence_retention_secs` ([`answer_sent`]).
//!
//! # Preview
//!
//! A connector with `preview = true` serves evidence the citizen must see and approve in
//! the preview space ([`crate::preview`]) before it leaves. The exchange then takes two
//! requests on one conversation:
//!
//! | request | answer |
//! |---|---|
//! | `PossibilityForPreview` false | EDM:ERR:0002 (missing authorization); the register is not called |
//! | first (no `PreviewLocation`) | the register is called as usual; its files stay in the payload store, a copy goes to a preview opened for the request's natural person; EDM:ERR:0002 with severity PreviewRequired and the preview link as `PreviewLocation` |
//! | second (echoing that `PreviewLocation`, same conversation, same sending access point) | held until the citizen decides or the link expires, then: approved → the response with the evidence; cancelled → a response with no evidence (an empty `RegistryObjectList`, as test event TC08 shows); expired → EDM:ERR:0005 (TC09) |
//! | second, naming no preview held for this exchange | EDM:ERR:0003 |
//!
//! Held evidence is deleted once the preview ends without being sent (cancelled, expired,
//! or no second request before the link expired); the preview space deletes its copies
//! as soon as the citizen decides. Held evidence is in the store, like the preview it
//! belongs to: a record (`h/{SHA-256 of the link}`) naming the exchange and the evidence's
//! payloads, so that the second request is answered by whichever instance of a pair
//! receives it, after a decision taken on any instance.

use std::cell::RefCell;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use time::OffsetDateTime;
use varti_oots::edm::error::EdmErrorKind;
use varti_oots::edm::sdg::{Agent, Identifier, LangText};
use varti_oots::edm::{EdmDocument, EdmVersion, EvidenceRequest};
use varti_oots::flow::{self, EvidenceData};
use varti_oots::validate::codelist::CodeLists;
use varti_oots::validate::model::ModelValidator;
use varti_oots::validate::schematron::RuleDir;
use varti_oots::validate::xsd::XsdValidator;
use varti_oots::validate::{Finding, Severity};
use varti_store::{MessageProperty, MessageRecord, PayloadEntry, PayloadRef};

use crate::config::ConnectorConfig;
use crate::connector::{self, ConnectorRequest, FetchedEvidence, Outcome};
use crate::gateway::Gateway;
use crate::gateway::{
    ACTION_ERROR, ACTION_RESPONSE, EDM_MIME, MAX_EDM_BYTES, OWNER, SERVICE, SERVICE_TYPE,
};
use crate::preview::{
    blocking, Person, PreviewEvidence, PreviewRequest, PreviewSpace, PreviewState,
};
use varti_access_point::submit::{submit, Submission};

/// The validators a provider checks requests with, loaded from `[oots]`. The XSD and
/// Schematron engines hold libxml2 / XPath state that must stay on one thread, so each
/// blocking worker thread loads its own set once and keeps it.
struct Validators {
    model: ModelValidator,
    xsd: Option<XsdValidator>,
    rules: Option<RuleDir>,
}

fn load_validators(gw: &Gateway) -> Validators {
    let c = &gw.config;
    let lists = match &c.codelists {
        Some(dir) => CodeLists::load_dir(dir).unwrap_or_else(|e| {
            tracing::error!(error = %e, "oots.codelists cannot be read: codes are not checked");
            CodeLists::default()
        }),
        None => CodeLists::default(),
    };
    let xsd = c.schemas.as_ref().and_then(|dir| match XsdValidator::load(dir) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(error = %e, "oots.schemas cannot be loaded: requests are not schema-validated");
            None
        }
    });
    let rules = c.rules.as_ref().and_then(|dir| match RuleDir::load(dir) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(error = %e, "oots.rules cannot be loaded: Schematron rules are not run");
            None
        }
    });
    Validators {
        model: ModelValidator::new(lists),
        xsd,
        rules,
    }
}

thread_local! {
    static VALIDATORS: RefCell<Option<Validators>> = const { RefCell::new(None) };
}

/// Every finding about `bytes` (call on a blocking thread).
fn findings_of(gw: &Gateway, bytes: &[u8]) -> Vec<Finding> {
    VALIDATORS.with(|cell| {
        let mut slot = cell.borrow_mut();
        let v = slot.get_or_insert_with(|| load_validators(gw));
        let mut findings = Vec::new();
        if let Some(x) = v.xsd.as_mut() {
            findings.extend(x.validate(bytes));
        }
        findings.extend(v.model.validate_bytes(bytes));
        if let (Some(r), Ok(text)) = (&v.rules, std::str::from_utf8(bytes)) {
            match r.validate(text) {
                Ok(f) => findings.extend(f),
                Err(e) => findings.push(Finding::new(
                    "SCH",
                    Severity::Fatal,
                    "/",
                    format!("Schematron rules not run: {e}"),
                )),
            }
        }
        findings
    })
}

/// What to send back.
struct Answer {
    action: &'static str,
    edm: String,
    evidence: Vec<(String, FetchedEvidence)>,
    /// The answer's `originalSender` (value, type) when it is not simply the request's
    /// `finalRecipient`: the platform answering for a provider it does not serve.
    sender: Option<(String, Option<String>)>,
}

/// The evidence held for open previews, in the store keyed by the preview link (the
/// `PreviewLocation` the second request of the exchange echoes).
pub(crate) struct Previews {
    space: Option<Arc<PreviewSpace>>,
}

/// Evidence fetched for a first request, waiting for the second one and the decision.
#[derive(serde::Serialize, serde::Deserialize)]
struct Held {
    preview_id: String,
    /// The exchange it belongs to: the second request must be on the same conversation,
    /// from the same access point.
    conversation_id: String,
    from_party: String,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
    files: Vec<FetchedEvidence>,
}

/// How long a held record outlives its link in the store (the expiry task's margin).
const HELD_MARGIN: time::Duration = time::Duration::minutes(1);

/// The store record of the evidence held for the preview link `location`.
fn held_key(location: &str) -> String {
    let digest = openssl::sha::sha256(location.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("h/{hex}")
}

impl Previews {
    /// The previews of a provider whose preview space is `space` (`None`: `[preview]` is
    /// off, and a connector that needs preview cannot be served).
    pub(crate) fn new(space: Option<Arc<PreviewSpace>>) -> Previews {
        Previews { space }
    }

    /// Holds `held` for the second request naming `location`.
    fn hold(gw: &Gateway, location: &str, held: &Held) -> Result<(), String> {
        let bytes = serde_json::to_vec(held).map_err(|e| e.to_string())?;
        gw.ap
            .store
            .put_preview_record(&held_key(location), &bytes, held.expires_at + HELD_MARGIN)
            .map_err(|e| e.to_string())
    }

    /// The evidence held for `location`, if `accept` takes it: then it is no longer held
    /// (single use, whichever instance asks).
    fn take(gw: &Gateway, location: &str, accept: impl Fn(&Held) -> bool) -> Option<Held> {
        let key = held_key(location);
        let bytes = match gw.ap.store.preview_record(&key) {
            Ok(b) => b?,
            Err(e) => {
                tracing::error!(error = %e, "OOTS: cannot read held evidence from the store");
                return None;
            }
        };
        let held: Held = serde_json::from_slice(&bytes).ok()?;
        if !accept(&held) {
            return None;
        }
        match gw.ap.store.remove_preview_records(&key) {
            Ok(1) => Some(held),
            _ => None,
        }
    }
}

/// Handles one received evidence request (already claimed) and submits the answer.
pub(crate) async fn handle(gw: Arc<Gateway>, previews: Arc<Previews>, record: MessageRecord) {
    let message_id = record.id().to_owned();
    let span = tracing::info_span!("oots_provide", message_id = %message_id, conversation_id = %record.meta.conversation_id);
    async move {
        let answer = answer(&gw, &previews, &record).await;
        let action = answer.action;
        match send(&gw, &record, answer).await {
            Ok(id) => tracing::info!(action, answer = %id, "OOTS: evidence request answered"),
            Err(e) => tracing::error!(error = %e, "OOTS: the answer to the evidence request could not be submitted; the requester will time out"),
        }
    }
    .instrument(span)
    .await
}

/// This gateway as an agent: the platform when one is configured, else the access point.
fn own_agent(gw: &Gateway) -> Agent {
    if let Some(p) = &gw.config.platform {
        let d = p.agent_data();
        return Agent {
            identifier: Some(Identifier {
                scheme_id: Some(d.identifier.scheme),
                value: d.identifier.value,
            }),
            names: vec![LangText {
                lang: Some(d.lang.unwrap_or_else(|| "EN".into())),
                text: d.name,
            }],
            country: d.country,
            classification: None,
        };
    }
    Agent {
        identifier: Some(Identifier {
            scheme_id: Some("urn:oasis:names:tc:ebcore:partyid-type:unregistered:oots".into()),
            value: gw.ap.current().identity.party.clone(),
        }),
        names: vec![LangText {
            lang: Some("EN".into()),
            text: gw.ap.current().identity.party.clone(),
        }],
        country: None,
        classification: None,
    }
}

async fn answer(gw: &Arc<Gateway>, previews: &Arc<Previews>, record: &MessageRecord) -> Answer {
    let bytes = match read_edm(gw, record).await {
        Ok(b) => b,
        Err(why) => {
            return error_answer(
                gw,
                None,
                EdmErrorKind::InvalidRequest,
                "The evidence request cannot be read",
                Some(&why),
            )
        }
    };
    let request = match EdmDocument::parse(&bytes) {
        Ok(EdmDocument::Request(r)) => r,
        Ok(_) => {
            return error_answer(gw, None, EdmErrorKind::InvalidRequest, "The message is not an evidence request", Some("the ExecuteQueryRequest action carries a query:QueryResponse; send a query:QueryRequest"));
        }
        Err(e) => {
            return error_answer(
                gw,
                None,
                EdmErrorKind::InvalidRequest,
                "The evidence request is not a readable EDM document",
                Some(&e.to_string()),
            );
        }
    };
    let findings = {
        let gw = gw.clone();
        let bytes = bytes.clone();
        tokio::task::spawn_blocking(move || findings_of(&gw, &bytes))
            .await
            .unwrap_or_default()
    };
    let fatal: Vec<&Finding> = findings
        .iter()
        .filter(|f| f.severity == Severity::Fatal)
        .collect();
    if !fatal.is_empty() {
        let mut ids: Vec<&str> = fatal.iter().map(|f| f.rule_id.as_str()).collect();
        ids.dedup();
        let detail = format!("{}: {}", ids.join(", "), fatal[0].message);
        tracing::info!(rules = %ids.join(","), "OOTS: invalid evidence request");
        return error_answer(
            gw,
            Some(&request),
            EdmErrorKind::InvalidRequest,
            "The evidence request is invalid",
            Some(&detail),
        );
    }
    if let Err((reason, detail)) = requester_binding(gw, record, &request) {
        gw.ap.metrics.refusal(OWNER, reason);
        let original_sender = record
            .meta
            .properties
            .iter()
            .find(|p| p.name == "originalSender")
            .map(|p| p.value.as_str())
            .unwrap_or_default();
        tracing::warn!(
            from_party = %record.meta.from_party,
            original_sender,
            requester = first_requester(&request)
                .and_then(|a| a.identifier)
                .map(|i| i.value)
                .unwrap_or_default(),
            reason,
            "OOTS: evidence request refused (EDM:ERR:0003) before any register is called: {detail}"
        );
        return error_answer(
            gw,
            Some(&request),
            EdmErrorKind::InvalidRequest,
            "The evidence request is invalid",
            Some(&detail),
        );
    }
    let provider_id = match provider_of(record, &request) {
        Ok(p) => p,
        Err(detail) => {
            return error_answer(
                gw,
                Some(&request),
                EdmErrorKind::InvalidRequest,
                "The evidence request is invalid",
                Some(&detail),
            )
        }
    };
    if !gw.config.serves_provider(&provider_id) {
        tracing::info!(provider = %provider_id, "OOTS: request for an evidence provider this gateway does not serve");
        // The provider named never saw it: the error comes from this gateway itself.
        let me = own_agent(gw);
        let mut answer = error_answer_by(
            Some(&request),
            &me,
            EdmErrorKind::UnresolvedReference,
            "The evidence provider is not served here",
            Some(&format!(
                "this gateway serves no evidence provider `{provider_id}`; look the provider's access point up in the Data Service Directory again"
            )),
        );
        answer.sender = me.identifier.map(|i| (i.value, i.scheme_id));
        return answer;
    }
    // Every answer from here on is that provider's: it is the originalSender.
    let scheme = request
        .evidence_provider()
        .and_then(|a| a.identifier)
        .and_then(|i| i.scheme_id)
        .or_else(|| {
            record
                .meta
                .properties
                .iter()
                .find(|p| p.name == "finalRecipient")
                .and_then(|p| p.type_.clone())
        });
    let sender = Some((provider_id.clone(), scheme));
    let from_provider = |a: Answer| Answer {
        sender: sender.clone(),
        ..a
    };
    let et = request
        .evidence_type()
        .unwrap_or_else(unreachable_evidence_type);
    let Some(connector) = gw.config.connector_for(
        &provider_id,
        et.identifier.as_deref(),
        et.classification.as_deref(),
    ) else {
        let detail = format!(
            "provider `{provider_id}` serves no evidence type `{}` ({})",
            et.identifier.as_deref().unwrap_or_default(),
            et.classification.as_deref().unwrap_or_default()
        );
        return from_provider(error_answer(
            gw,
            Some(&request),
            EdmErrorKind::UnsupportedCapability,
            "The evidence type is not supported",
            Some(&detail),
        ));
    };
    from_provider(serve(gw, previews, record, &request, connector).await)
}

/// Serves a valid request for one of this gateway's providers from its connector: the
/// register's evidence, through the preview space when the connector needs preview.
async fn serve(
    gw: &Arc<Gateway>,
    previews: &Arc<Previews>,
    record: &MessageRecord,
    request: &EvidenceRequest,
    connector: &ConnectorConfig,
) -> Answer {
    if connector.preview {
        if let Some(location) = request.preview_location() {
            return after_preview(gw, previews, record, request, location).await;
        }
        if request.possibility_for_preview() != Some(true) {
            // Never the evidence without the citizen's preview: the register is not even
            // asked.
            return error_answer(
                gw,
                Some(request),
                EdmErrorKind::Authorization,
                "Missing Authorization",
                Some("this evidence type is sent only after the user previewed and approved it; ask again with PossibilityForPreview true"),
            );
        }
    }
    let call = connector_request(request);
    // What the register said, when it is not evidence: the matching EDM error.
    let refusal = |kind, message: &str, detail: &str| {
        error_answer(gw, Some(request), kind, message, Some(detail))
    };
    let files = match connector::call(gw, connector, &call).await {
        Outcome::Evidence(files) if files.is_empty() => {
            return refusal(
                EdmErrorKind::ObjectNotFound,
                "No evidence found",
                "the register returned no evidence file",
            )
        }
        Outcome::Evidence(files) => files,
        Outcome::NotFound(d) => {
            return refusal(EdmErrorKind::ObjectNotFound, "No evidence found", &d)
        }
        Outcome::Invalid(d) => {
            return refusal(
                EdmErrorKind::InvalidRequest,
                "The register refused the request",
                &d,
            )
        }
        Outcome::TimedOut(d) => return refusal(EdmErrorKind::Timeout, "Timeout exceeded", &d),
        Outcome::Unavailable(d) => {
            return refusal(EdmErrorKind::Query, "The query cannot be processed", &d)
        }
    };
    if connector.preview {
        return open_preview(gw, previews, record, request, connector, files).await;
    }
    evidence_answer(gw, request, files)
}

/// Whether the request's parties agree: its `originalSender` is the EvidenceRequester
/// agent it names (`ER`), or — from a gateway `[[oots.requester_platforms]]` names — that
/// gateway's platform, named as the `IP` agent; an `IP` agent it names must be the sending
/// gateway's configured platform, and a configured platform must come from its own
/// gateway. Else (reason, what does not agree).
fn requester_binding(
    gw: &Gateway,
    record: &MessageRecord,
    request: &EvidenceRequest,
) -> Result<(), (&'static str, String)> {
    let from = &record.meta.from_party;
    // The sending gateway by every name it goes by: its PMode party name and ids.
    let snap = gw.ap.current();
    let party = snap.pmodes.party(from).or_else(|| {
        snap.pmodes
            .parties
            .iter()
            .find(|p| p.ids.iter().any(|i| &i.value == from))
    });
    let mut names: Vec<&str> = vec![from.as_str()];
    if let Some(p) = party {
        names.push(p.name.as_str());
        names.extend(p.ids.iter().map(|i| i.value.as_str()));
    }
    let gateway = party.map_or(from.as_str(), |p| p.name.as_str());
    let configured = gw.config.platform_of_gateway(&names);
    let agents = request.evidence_requesters();
    let id_of = |a: &Agent| {
        a.identifier
            .as_ref()
            .map(|i| (i.value.trim().to_owned(), i.scheme_id.clone()))
    };
    let er = agents
        .iter()
        .find(|a| a.classification.as_deref() != Some("IP"))
        .and_then(id_of);
    let ip = agents
        .iter()
        .find(|a| a.classification.as_deref() == Some("IP"))
        .and_then(id_of);
    if let Some((ip, _)) = &ip {
        match (configured, gw.config.gateway_of_platform(ip)) {
            (Some(mine), _) if mine != ip => {
                return Err((
                    "wrong_platform",
                    format!("the request names the intermediary platform `{ip}`, but the sending gateway `{gateway}` is the platform `{mine}`"),
                ))
            }
            (None, Some(other)) => {
                return Err((
                    "wrong_platform",
                    format!("the request names the intermediary platform `{ip}`, whose requests come from gateway `{other}`, not from `{gateway}`"),
                ))
            }
            _ => {}
        }
    }
    let Some(os) = record
        .meta
        .properties
        .iter()
        .find(|p| p.name == "originalSender")
    else {
        return Err((
            "original_sender_not_requester",
            "the request has no originalSender; it must name the EvidenceRequester".into(),
        ));
    };
    let matches = |who: &Option<(String, Option<String>)>| {
        who.as_ref().is_some_and(|(v, s)| {
            v == os.value.trim()
                && match (s, &os.type_) {
                    (Some(s), Some(t)) => s.trim() == t.trim(),
                    _ => true,
                }
        })
    };
    if matches(&er) {
        return Ok(());
    }
    if matches(&ip) && configured.is_some() {
        // The configured platform speaks for its portals (checked above to be this one).
        return Ok(());
    }
    let requester = er.map(|(v, _)| v).unwrap_or_default();
    let also = match &ip {
        Some((ip, _)) if ip == os.value.trim() => format!(
            ", and the intermediary platform `{ip}` it names is not configured for gateway `{gateway}` (oots.requester_platforms)"
        ),
        _ => String::new(),
    };
    Err((
        "original_sender_not_requester",
        format!(
            "the originalSender `{}` is not the EvidenceRequester `{requester}` the request names{also}",
            os.value.trim()
        ),
    ))
}

/// The provider a request names: its EvidenceProvider agent's identifier and its
/// `finalRecipient` property, which must agree when both are there.
fn provider_of(record: &MessageRecord, request: &EvidenceRequest) -> Result<String, String> {
    let in_edm = request
        .evidence_provider()
        .and_then(|a| a.identifier)
        .map(|i| i.value.trim().to_owned());
    let in_header = record
        .meta
        .properties
        .iter()
        .find(|p| p.name == "finalRecipient")
        .map(|p| p.value.trim().to_owned());
    match (in_edm, in_header) {
        (Some(e), Some(h)) if e != h => Err(format!(
            "the finalRecipient `{h}` and the EvidenceProvider agent `{e}` name different providers; name the same one in both"
        )),
        (Some(p), _) | (None, Some(p)) => Ok(p),
        (None, None) => Err(
            "the request names no evidence provider (no EvidenceProvider agent, no finalRecipient)"
                .into(),
        ),
    }
}

/// The response carrying `files` (none: the empty response of a rejected preview).
fn evidence_answer(gw: &Gateway, request: &EvidenceRequest, files: Vec<FetchedEvidence>) -> Answer {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let evidence: Vec<(String, FetchedEvidence)> = files
        .into_iter()
        .enumerate()
        .map(|(n, f)| (format!("evidence{n}-{tag}@varti"), f))
        .collect();
    let data: Vec<EvidenceData> = evidence
        .iter()
        .map(|(cid, f)| EvidenceData {
            content_id: cid.clone(),
            mime_type: f.mime_type.clone(),
            title: f.title.clone(),
            issuing_date: f.issuing_date.clone(),
        })
        .collect();
    let provider = request.evidence_provider().unwrap_or_else(|| own_agent(gw));
    let response = flow::build_response(request, &provider, &data);
    Answer {
        action: ACTION_RESPONSE,
        edm: EdmDocument::Response(response).to_xml(),
        evidence,
        sender: None,
    }
}

/// The person a preview is for: the request's natural person (eIDAS minimum data set).
fn preview_person(request: &EvidenceRequest) -> Option<Person> {
    let p = request.natural_person()?;
    Some(Person {
        identifier: p.identifier.map(|i| i.value),
        given_name: p.given_name?,
        family_name: p.family_name?,
        birth_date: p.date_of_birth?,
    })
}

/// Who asked, as the citizen reads it: the requester's name and country.
fn requester_label(request: &EvidenceRequest) -> String {
    match first_requester(request) {
        Some(a) => {
            let name = a
                .names
                .first()
                .map(|n| n.text.clone())
                .or_else(|| a.identifier.as_ref().map(|i| i.value.clone()))
                .unwrap_or_else(|| "?".into());
            match a.country {
                Some(c) => format!("{name} ({c})"),
                None => name,
            }
        }
        None => "an evidence requester of another member state".into(),
    }
}

/// First request of a preview exchange: copies the evidence into a new preview, holds the
/// stored files for the second request, and answers PreviewRequired with the link.
async fn open_preview(
    gw: &Arc<Gateway>,
    previews: &Arc<Previews>,
    record: &MessageRecord,
    request: &EvidenceRequest,
    connector: &ConnectorConfig,
    files: Vec<FetchedEvidence>,
) -> Answer {
    let Some(space) = previews.space.clone() else {
        connector::discard(gw, stored_refs(&files)).await;
        return error_answer(gw, Some(request), EdmErrorKind::Query, "The query cannot be processed", Some("this evidence type needs preview and the provider's preview space is not running ([preview] enabled = false)"));
    };
    let Some(person) = preview_person(request) else {
        connector::discard(gw, stored_refs(&files)).await;
        return error_answer(gw, Some(request), EdmErrorKind::InvalidRequest, "The evidence request is invalid", Some("this evidence type needs the user's preview, which needs the natural person's family name, given name and date of birth"));
    };
    // The preview space owns (and deletes) its copies; the stored files stay for the answer.
    let copies = {
        let (gw, space, files) = (gw.clone(), space.clone(), files.clone());
        let stylesheet = connector.stylesheet.clone();
        tokio::task::spawn_blocking(move || {
            copy_for_preview(&gw, &space, &files, stylesheet.as_deref())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
    };
    let evidences = match copies {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "OOTS: cannot copy the evidence into the preview space");
            connector::discard(gw, stored_refs(&files)).await;
            return error_answer(
                gw,
                Some(request),
                EdmErrorKind::Query,
                "The query cannot be processed",
                Some("the provider could not prepare the preview; try again later"),
            );
        }
    };
    // The preview and the held evidence go to the store, which may block (PostgreSQL).
    let held = blocking(|| {
        let opened = space.open(PreviewRequest {
            reference: request.id.clone().unwrap_or_default(),
            person,
            requester: requester_label(request),
            procedure: request.procedure().map(str::to_owned),
            evidences,
            return_url: None,
            ttl: None,
            owner: OWNER.to_owned(),
        });
        opened.map_err(|e| e.to_string()).and_then(|link| {
            let held = Held {
                preview_id: link.id.clone(),
                conversation_id: record.meta.conversation_id.clone(),
                from_party: record.meta.from_party.clone(),
                expires_at: link.expires_at,
                files: files.clone(),
            };
            Previews::hold(gw, &link.url, &held).map(|()| link)
        })
    });
    let link = match held {
        Ok(link) => link,
        Err(e) => {
            tracing::error!(error = %e, "OOTS: cannot hold the evidence for a preview in the store");
            connector::discard(gw, stored_refs(&files)).await;
            return error_answer(
                gw,
                Some(request),
                EdmErrorKind::Query,
                "The query cannot be processed",
                Some("the provider could not prepare the preview; try again later"),
            );
        }
    };
    tracing::info!(preview = %link.id, expires_at = %link.expires_at, "OOTS: evidence held for the user's preview");
    // No second request before the link expires: the held evidence goes.
    {
        let (gw, url) = (gw.clone(), link.url.clone());
        let left: Duration = (link.expires_at - gw.ap.clock.now())
            .try_into()
            .unwrap_or(Duration::ZERO);
        tokio::spawn(async move {
            tokio::time::sleep(left + Duration::from_secs(1)).await;
            if let Some(h) = blocking(|| Previews::take(&gw, &url, |_| true)) {
                tracing::info!(preview = %h.preview_id, "OOTS: no second request before the preview expired; held evidence deleted");
                connector::discard(&gw, stored_refs(&h.files)).await;
            }
        });
    }
    let version = request
        .specification_identifier()
        .and_then(EdmVersion::from_identifier)
        .unwrap_or(EdmVersion::V2_0);
    let provider = request.evidence_provider().unwrap_or_else(|| own_agent(gw));
    let e = flow::build_preview_required(
        request.id.as_deref().unwrap_or_default(),
        version,
        &link.url,
        &provider,
        first_requester(request).as_ref(),
    );
    Answer {
        action: ACTION_ERROR,
        edm: EdmDocument::Error(e).to_xml(),
        evidence: Vec::new(),
        sender: None,
    }
}

/// Streams each stored evidence file into a file of the preview space, and beside each XML
/// one with a stylesheet (the register's, else the connector's `stylesheet`) its
/// transformation into HTML (TC10). A stylesheet that fails leaves the XML shown as an
/// outline: the citizen can still decide.
fn copy_for_preview(
    gw: &Gateway,
    space: &PreviewSpace,
    files: &[FetchedEvidence],
    configured_stylesheet: Option<&Path>,
) -> Result<Vec<PreviewEvidence>, String> {
    // `upload-`: the sweep leaves it alone until `open` moved the files out.
    let dir = space
        .files_dir()
        .join(format!("upload-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for (n, f) in files.iter().enumerate() {
        let path = dir.join(n.to_string());
        let copied = gw
            .ap
            .store
            .payloads()
            .open(&f.stored)
            .map_err(|e| e.to_string())
            .and_then(|mut r| {
                let mut file = std::fs::File::create(&path).map_err(|e| e.to_string())?;
                std::io::copy(&mut r, &mut file).map_err(|e| e.to_string())
            });
        if let Err(e) = copied {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!("{}: {e}", path.display()));
        }
        let html = transformed(f, &path, configured_stylesheet);
        out.push(PreviewEvidence {
            title: f
                .title
                .clone()
                .unwrap_or_else(|| format!("Evidence {}", n + 1)),
            media_type: f.mime_type.clone(),
            path,
            html,
        });
    }
    Ok(out)
}

/// Largest XML evidence transformed for the preview (bigger ones are shown as a download).
const MAX_TRANSFORMED_XML: u64 = 8 * 1024 * 1024;

/// The HTML file made from the XML evidence at `path` with its stylesheet, if it has one
/// and the transformation worked.
fn transformed(
    f: &FetchedEvidence,
    path: &Path,
    configured_stylesheet: Option<&Path>,
) -> Option<PathBuf> {
    let is_xml = f.mime_type.ends_with("/xml") || f.mime_type.ends_with("+xml");
    if !is_xml {
        return None;
    }
    let xsl = match (&f.stylesheet, configured_stylesheet) {
        (Some(xsl), _) => xsl.clone(),
        (None, Some(file)) => match std::fs::read(file) {
            Ok(xsl) => xsl,
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "OOTS: cannot read the connector's stylesheet; the XML evidence is shown as it is");
                return None;
            }
        },
        (None, None) => return None,
    };
    if std::fs::metadata(path).ok()?.len() > MAX_TRANSFORMED_XML {
        tracing::warn!("OOTS: the XML evidence is too large to transform; shown as a download");
        return None;
    }
    let xml = std::fs::read(path).ok()?;
    match crate::preview::xslt::transform(&xml, &xsl, Default::default()) {
        Ok(html) => {
            let out = path.with_extension("html");
            match std::fs::write(&out, html) {
                Ok(()) => Some(out),
                Err(e) => {
                    tracing::warn!(file = %out.display(), error = %e, "OOTS: cannot write the transformed evidence");
                    None
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "OOTS: the evidence's stylesheet failed; the XML evidence is shown as it is");
            None
        }
    }
}

/// Second request of a preview exchange: waits for the citizen's decision, then answers.
async fn after_preview(
    gw: &Arc<Gateway>,
    previews: &Arc<Previews>,
    record: &MessageRecord,
    request: &EvidenceRequest,
    location: &str,
) -> Answer {
    let held = blocking(|| {
        Previews::take(gw, location, |h| {
            h.conversation_id == record.meta.conversation_id
                && h.from_party == record.meta.from_party
        })
    });
    let (Some(held), Some(space)) = (held, previews.space.clone()) else {
        return error_answer(gw, Some(request), EdmErrorKind::InvalidRequest, "The evidence request is invalid", Some("its PreviewLocation names no preview this provider holds for this exchange (unknown, on another conversation, already answered, or expired); send a new request without PreviewLocation"));
    };
    if let Some(back) = request.return_location() {
        blocking(|| space.set_return_url(&held.preview_id, back));
    }
    let left: Duration = (held.expires_at - gw.ap.clock.now())
        .try_into()
        .unwrap_or(Duration::ZERO);
    tracing::info!(preview = %held.preview_id, "OOTS: second request received; waiting for the user's decision");
    let state = space
        .wait(&held.preview_id, left + Duration::from_secs(1))
        .await
        .map(|s| s.state);
    let stored = stored_refs(&held.files);
    match state {
        Some(PreviewState::Approved) => {
            tracing::info!(preview = %held.preview_id, "OOTS: the user approved; sending the evidence");
            evidence_answer(gw, request, held.files)
        }
        Some(PreviewState::Cancelled) => {
            tracing::info!(preview = %held.preview_id, "OOTS: the user cancelled; the evidence is deleted, not sent");
            connector::discard(gw, stored).await;
            evidence_answer(gw, request, Vec::new())
        }
        _ => {
            tracing::info!(preview = %held.preview_id, "OOTS: the preview expired without a decision; the evidence is deleted");
            connector::discard(gw, stored).await;
            error_answer(gw, Some(request), EdmErrorKind::Timeout, "Timeout exceeded", Some("the user did not approve the evidence in the preview space before the link expired"))
        }
    }
}

fn stored_refs(files: &[FetchedEvidence]) -> Vec<PayloadRef> {
    files.iter().map(|f| f.stored.clone()).collect()
}

/// The request's evidence requester (not the intermediary platform).
fn first_requester(r: &EvidenceRequest) -> Option<Agent> {
    r.evidence_requesters()
        .into_iter()
        .find(|a| a.classification.as_deref() != Some("IP"))
}

fn unreachable_evidence_type() -> varti_oots::edm::sdg::EvidenceType {
    // The model validation requires the evidence type: a request without one never gets
    // here. An empty one routes to no connector, which is still a correct answer.
    varti_oots::edm::sdg::EvidenceType {
        identifier: None,
        classification: None,
        titles: Vec::new(),
        formats: Vec::new(),
        conforms_to: None,
    }
}

fn error_answer(
    gw: &Gateway,
    request: Option<&EvidenceRequest>,
    kind: EdmErrorKind,
    message: &str,
    detail: Option<&str>,
) -> Answer {
    let provider = request
        .and_then(|r| r.evidence_provider())
        .unwrap_or_else(|| own_agent(gw));
    error_answer_by(request, &provider, kind, message, detail)
}

/// An error answer with `provider` as the error provider.
fn error_answer_by(
    request: Option<&EvidenceRequest>,
    provider: &Agent,
    kind: EdmErrorKind,
    message: &str,
    detail: Option<&str>,
) -> Answer {
    let version = request
        .and_then(|r| r.specification_identifier())
        .and_then(EdmVersion::from_identifier)
        .unwrap_or(EdmVersion::V2_0);
    // The requestId must be the request's; an unreadable request gets a fresh id (the
    // requester correlates by the AS4 RefToMessageId and ConversationId anyway).
    let request_id = request
        .and_then(|r| r.id.clone())
        .unwrap_or_else(flow::new_urn_uuid);
    let requester = request.and_then(first_requester);
    let e = flow::build_error(
        &request_id,
        version,
        kind,
        message,
        detail,
        provider,
        requester.as_ref(),
    );
    Answer {
        action: ACTION_ERROR,
        edm: EdmDocument::Error(e).to_xml(),
        evidence: Vec::new(),
        sender: None,
    }
}

fn connector_request(r: &EvidenceRequest) -> ConnectorRequest {
    let et = r.evidence_type();
    let requester = first_requester(r);
    ConnectorRequest {
        request_id: r.id.clone().unwrap_or_default(),
        edm_version: r.specification_identifier().map(str::to_owned),
        evidence_type: serde_json::json!({
            "identifier": et.as_ref().and_then(|e| e.identifier.clone()),
            "classification": et.as_ref().and_then(|e| e.classification.clone()),
            "formats": et.as_ref().map(|e| e.formats.clone()).unwrap_or_default(),
        }),
        procedure: r.procedure().map(str::to_owned),
        requirements: r
            .requirements()
            .into_iter()
            .filter_map(|q| q.identifier)
            .collect(),
        natural_person: r.natural_person().map(|p| {
            serde_json::json!({
                "identifier": p.identifier.map(|i| i.value),
                "family_name": p.family_name,
                "given_name": p.given_name,
                "date_of_birth": p.date_of_birth,
                "level_of_assurance": p.level_of_assurance,
            })
        }),
        legal_person: r.legal_person().map(|p| {
            serde_json::json!({
                "identifier": p.legal_person_identifier.map(|i| i.value),
                "legal_name": p.legal_name,
                "level_of_assurance": p.level_of_assurance,
            })
        }),
        requester: requester.map(|a| {
            serde_json::json!({
                "scheme": a.identifier.as_ref().and_then(|i| i.scheme_id.clone()),
                "identifier": a.identifier.as_ref().map(|i| i.value.clone()),
                "name": a.names.first().map(|n| n.text.clone()),
                "country": a.country,
            })
        }),
        preview_possible: r.possibility_for_preview().unwrap_or(false),
    }
}

/// The EDM document of a received OOTS message (the `application/x-ebrs+xml` part, else
/// the first), bounded by [`MAX_EDM_BYTES`].
pub(crate) async fn read_edm(gw: &Arc<Gateway>, record: &MessageRecord) -> Result<Vec<u8>, String> {
    let entry = record
        .meta
        .payloads
        .iter()
        .find(|p| p.mime_type == EDM_MIME)
        .or_else(|| record.meta.payloads.first())
        .cloned()
        .ok_or_else(|| {
            "the message has no payload; the EDM document must be its first part".to_owned()
        })?;
    if entry.stored.size > MAX_EDM_BYTES {
        return Err(format!(
            "the EDM document is {} bytes, over the {MAX_EDM_BYTES}-byte limit",
            entry.stored.size
        ));
    }
    let gw = gw.clone();
    tokio::task::spawn_blocking(move || {
        let mut reader = gw
            .ap
            .store
            .payloads()
            .open(&entry.stored)
            .map_err(|e| format!("cannot open the EDM document: {e}"))?;
        let mut bytes = Vec::new();
        reader
            .by_ref()
            .take(MAX_EDM_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read the EDM document: {e}"))?;
        Ok(bytes)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The requester's access point acknowledged the answer `message_id`: the evidence is
/// handed over. After `oots.evidence_retention_secs` the answer's payloads and those of
/// the request it answers are purged (a restart in between leaves them to the general
/// `retention.payload_days`).
pub(crate) async fn answer_sent(gw: Arc<Gateway>, message_id: String) {
    let ap2 = gw.ap.clone();
    let id = message_id.clone();
    let Ok(Ok(Some(record))) = tokio::task::spawn_blocking(move || ap2.store.get(&id)).await else {
        return;
    };
    if record.meta.owner != OWNER
        || !matches!(record.meta.action.as_str(), ACTION_RESPONSE | ACTION_ERROR)
    {
        return;
    }
    tokio::time::sleep(std::time::Duration::from_secs(
        gw.config.evidence_retention_secs,
    ))
    .await;
    let _ = tokio::task::spawn_blocking(move || {
        let now = gw.ap.clock.now();
        for id in [Some(message_id.as_str()), record.meta.ref_to_message_id.as_deref()]
            .into_iter()
            .flatten()
        {
            match gw.ap.store.purge_payloads_of(id, now) {
                Ok(true) => tracing::info!(message_id = %id, "OOTS: answered exchange's payloads purged after hand-over"),
                Ok(false) | Err(varti_store::StoreError::NotFound { .. }) => {}
                Err(e) => tracing::warn!(message_id = %id, error = %e, "OOTS: cannot purge the answered exchange's payloads"),
            }
        }
    })
    .await;
}

/// Stores the EDM document and submits the answer.
async fn send(
    gw: &Arc<Gateway>,
    request: &MessageRecord,
    answer: Answer,
) -> Result<String, String> {
    let ap2 = gw.ap.clone();
    let edm = answer.edm.into_bytes();
    let edm_ref: PayloadRef =
        tokio::task::spawn_blocking(move || ap2.store.payloads().put(&mut edm.as_slice()))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot store the EDM document: {e}"))?;
    let mut payloads = vec![PayloadEntry {
        content_id: format!("edm-{}@varti", uuid::Uuid::new_v4().simple()),
        mime_type: EDM_MIME.to_owned(),
        stored: edm_ref,
        properties: Vec::new(),
    }];
    for (cid, f) in &answer.evidence {
        payloads.push(PayloadEntry {
            content_id: cid.clone(),
            mime_type: f.mime_type.clone(),
            stored: f.stored.clone(),
            properties: Vec::new(),
        });
    }
    let prop = |name: &str| request.meta.properties.iter().find(|p| p.name == name);
    let mut properties = Vec::new();
    if let Some((value, type_)) = &answer.sender {
        properties.push(MessageProperty {
            name: "originalSender".to_owned(),
            value: value.clone(),
            type_: type_.clone(),
        });
    }
    // Four corners, reversed: the answer goes from C4 back to C1.
    for (ours, theirs) in [
        ("originalSender", "finalRecipient"),
        ("finalRecipient", "originalSender"),
    ] {
        if ours == "originalSender" && answer.sender.is_some() {
            continue;
        }
        if let Some(p) = prop(theirs) {
            properties.push(MessageProperty {
                name: ours.to_owned(),
                value: p.value.clone(),
                type_: p.type_.clone(),
            });
        }
    }
    for name in ["ExchangeId", "SpecificationId"] {
        if let Some(p) = prop(name) {
            properties.push(p.clone());
        }
    }
    let sub = Submission {
        owner: OWNER.to_owned(),
        to_party: request.meta.from_party.clone(),
        service: SERVICE.to_owned(),
        service_type: Some(SERVICE_TYPE.to_owned()),
        action: answer.action.to_owned(),
        conversation_id: Some(request.meta.conversation_id.clone()),
        ref_to_message_id: Some(request.meta.message_id.clone()),
        properties,
        payloads: payloads.clone(),
        ..Submission::default()
    };
    let ap2 = gw.ap.clone();
    let result = tokio::task::spawn_blocking(move || {
        let now = ap2.clock.now();
        submit(&ap2, sub, now)
    })
    .await
    .map_err(|e| e.to_string())?;
    match result {
        Ok(id) => Ok(id),
        Err(e) => {
            connector::discard(gw, payloads.into_iter().map(|p| p.stored).collect()).await;
            Err(e.to_string())
        }
    }
}
