//! OASIS genericode code lists (`*.gc`), loaded from a directory a deployment configures
//! (the EC publishes them beside the EDM; Varti does not ship copies).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::edm::xml::{self, Element};

/// Why code lists could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CodeListError {
    /// The directory or a file could not be read.
    #[error("cannot read code lists at {path}: {source}")]
    Io {
        /// What was being read.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not a genericode code list.
    #[error("{path} is not a genericode code list: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// One code list: its short name and the codes of its key column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeList {
    /// `Identification/ShortName`, e.g. `Procedures`, `EAS`.
    pub short_name: String,
    /// The codes (trimmed values of the key column).
    pub codes: BTreeSet<String>,
}

impl CodeList {
    /// Reads a genericode document.
    pub fn parse(bytes: &[u8]) -> Result<CodeList, String> {
        let root = xml::parse(bytes).map_err(|e| e.to_string())?;
        if root.name.local != "CodeList" {
            return Err(format!("root element is {}", root.name.local));
        }
        let child = |el: &'_ Element, local: &str| -> Option<Element> {
            el.elements().find(|e| e.name.local == local).cloned()
        };
        let short_name = child(&root, "Identification")
            .and_then(|i| child(&i, "ShortName"))
            .map(|s| s.text().trim().to_owned())
            .ok_or("no Identification/ShortName")?;
        // The key column: the first Key's ColumnRef, else a column called code.
        let columns = child(&root, "ColumnSet").ok_or("no ColumnSet")?;
        let key = columns
            .elements()
            .find(|e| e.name.local == "Key")
            .and_then(|k| k.elements().find(|e| e.name.local == "ColumnRef").cloned())
            .and_then(|r| r.attr("", "Ref").map(str::to_owned))
            .unwrap_or_else(|| "code".to_owned());
        let list = child(&root, "SimpleCodeList").ok_or("no SimpleCodeList")?;
        let mut codes = BTreeSet::new();
        for row in list.elements().filter(|e| e.name.local == "Row") {
            for value in row.elements().filter(|e| e.name.local == "Value") {
                // Some lists spell the key column with another case (EAS: Code vs code).
                if value
                    .attr("", "ColumnRef")
                    .is_some_and(|c| c.eq_ignore_ascii_case(&key))
                {
                    if let Some(sv) = value.elements().find(|e| e.name.local == "SimpleValue") {
                        codes.insert(sv.text().trim().to_owned());
                    }
                }
            }
        }
        if codes.is_empty() {
            return Err(format!("no codes in key column {key}"));
        }
        Ok(CodeList { short_name, codes })
    }
}

/// The code lists of a directory (searched recursively for `*.gc`), by short name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CodeLists {
    lists: BTreeMap<String, CodeList>,
    problems: Vec<String>,
}

impl CodeLists {
    /// Loads every `*.gc` file under `dir`. A directory that cannot be read is an error;
    /// a file that is not a well-formed code list is skipped and recorded in
    /// [`CodeLists::problems`] (the EC's own `EDMErrorCodes-CodeList.gc` is malformed),
    /// so one bad file does not disable every code-list check.
    pub fn load_dir(dir: &Path) -> Result<CodeLists, CodeListError> {
        let mut out = CodeLists::default();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(d) = pending.pop() {
            let entries = std::fs::read_dir(&d).map_err(|source| CodeListError::Io {
                path: d.clone(),
                source,
            })?;
            for entry in entries {
                let path = entry
                    .map_err(|source| CodeListError::Io {
                        path: d.clone(),
                        source,
                    })?
                    .path();
                if path.is_dir() {
                    pending.push(path);
                } else if path.extension().is_some_and(|e| e == "gc") {
                    let bytes = std::fs::read(&path).map_err(|source| CodeListError::Io {
                        path: path.clone(),
                        source,
                    })?;
                    match CodeList::parse(&bytes) {
                        Ok(list) => out.insert(list),
                        Err(reason) => out
                            .problems
                            .push(CodeListError::Format { path, reason }.to_string()),
                    }
                }
            }
        }
        Ok(out)
    }

    /// Adds (or replaces) a list.
    pub fn insert(&mut self, list: CodeList) {
        self.lists.insert(list.short_name.clone(), list);
    }

    /// The list with this short name.
    pub fn get(&self, short_name: &str) -> Option<&CodeList> {
        self.lists.get(short_name)
    }

    /// Whether `code` is in the list: None when the list is not loaded (the check cannot
    /// be made).
    pub fn contains(&self, short_name: &str, code: &str) -> Option<bool> {
        self.get(short_name).map(|l| l.codes.contains(code.trim()))
    }

    /// The files that could not be read as code lists, each with why.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// How many lists are loaded.
    pub fn len(&self) -> usize {
        self.lists.len()
    }

    /// Whether none is loaded.
    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }
}
