//! CNI error results: `{"cniVersion", "code", "msg", "details"}` on stdout
//! and a non-zero exit, as the spec asks.

use serde_json::json;

/// Codes from the CNI spec (1-99) and this plugin's own (100+).
pub(crate) mod code {
    pub(crate) const INCOMPATIBLE_VERSION: u32 = 1;
    pub(crate) const UNKNOWN_CONTAINER: u32 = 3;
    pub(crate) const INVALID_ENV: u32 = 4;
    pub(crate) const IO_FAILURE: u32 = 5;
    pub(crate) const DECODE: u32 = 6;
    pub(crate) const INVALID_CONFIG: u32 = 7;
    pub(crate) const TRY_AGAIN_LATER: u32 = 11;
    /// The delegate plugin is not on `CNI_PATH`.
    pub(crate) const DELEGATE_NOT_FOUND: u32 = 100;
    /// The delegate ran but its answer was not a CNI result.
    pub(crate) const DELEGATE_FAILED: u32 = 101;
}

/// A failure to report to the runtime.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CniError {
    /// Ours: code, message, details.
    Own { code: u32, msg: String, details: String },
    /// The delegate's own error result, passed on unchanged.
    Delegate(String),
}

impl CniError {
    pub(crate) fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError::Own { code, msg: msg.into(), details: String::new() }
    }

    pub(crate) fn with_details(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError::Own { code, msg: msg.into(), details: details.into() }
    }

    /// The JSON the runtime reads on stdout.
    pub(crate) fn render(&self, cni_version: &str) -> String {
        match self {
            CniError::Own { code, msg, details } => {
                let mut v = json!({"cniVersion": cni_version, "code": code, "msg": msg});
                if !details.is_empty() {
                    v["details"] = json!(details);
                }
                v.to_string()
            }
            CniError::Delegate(out) => out.trim().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_render_as_the_spec_says() {
        let e = CniError::with_details(code::TRY_AGAIN_LATER, "no subnet file", "is weft running?");
        let v: serde_json::Value = serde_json::from_str(&e.render("1.0.0")).unwrap();
        assert_eq!(
            v,
            json!({"cniVersion": "1.0.0", "code": 11, "msg": "no subnet file", "details": "is weft running?"})
        );
        let v: serde_json::Value = serde_json::from_str(&CniError::new(7, "bad").render("0.4.0")).unwrap();
        assert!(v.get("details").is_none());
        assert_eq!(CniError::Delegate(" {\"code\":7}\n".into()).render("1.0.0"), "{\"code\":7}");
    }
}
