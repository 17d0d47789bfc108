//! The operator's Helm chart through the real Helm engine: lint it, render it, dry-run an
//! install, and read back every rendered object as a [`serde_json::Value`].
//!
//! Helm is Helm's Go SDK (v4) from PyPI's `helm-python-sdk`, in a venv that `make helm-venv`
//! creates under `target/helm-venv` (or the interpreter named by `ZBASE_HELM_PYTHON`);
//! `tests/helm/helm.py` drives it and answers in JSON. A missing venv is an error that says
//! how to make it, never a silent skip.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::{Value, json};

/// The environment variable naming the Python interpreter that has `helm-python-sdk`.
pub const PYTHON_ENV: &str = "ZBASE_HELM_PYTHON";

/// The workspace's root folder.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The operator chart's folder, `charts/zbase-operator`.
pub fn chart_dir() -> PathBuf {
    workspace_root().join("charts").join("zbase-operator")
}

/// The interpreter of the Helm venv: `$ZBASE_HELM_PYTHON`, else `target/helm-venv/bin/python`.
///
/// Fails, saying to run `make helm-venv`, when it does not exist.
pub fn python() -> Result<PathBuf> {
    let python = match std::env::var_os(PYTHON_ENV) {
        Some(path) => PathBuf::from(path),
        None => workspace_root().join("target/helm-venv/bin/python"),
    };
    if !python.exists() {
        bail!(
            "no Helm engine: {} does not exist. Run `make helm-venv` (a Python venv with \
             helm-python-sdk under target/helm-venv), or set {PYTHON_ENV} to a Python that has it",
            python.display()
        );
    }
    Ok(python)
}

/// Parses every YAML document of a file with Helm's YAML reader.
pub fn yaml_documents(file: &Path) -> Result<Vec<Value>> {
    let answer = run(json!({"action": "yaml", "file": file}))?
        .map_err(|refusal| anyhow!("{}: {refusal}", file.display()))?;
    match answer.get("documents") {
        Some(Value::Array(documents)) => Ok(documents.clone()),
        _ => bail!("helm.py answered without documents: {answer}"),
    }
}

/// Helm refused a request: invalid values, a failing template, an incompatible cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelmError {
    /// The SDK's exception class, e.g. `HelmValuesError` or `HelmRenderError`.
    pub kind: String,
    /// Helm's message, which names the offending key or template.
    pub message: String,
}

impl fmt::Display for HelmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for HelmError {}

/// A chart with the values and release it is rendered, linted or installed with.
#[derive(Debug, Clone)]
pub struct Chart {
    path: PathBuf,
    values: Value,
    values_files: Vec<PathBuf>,
    name: String,
    namespace: String,
}

impl Chart {
    /// The operator chart as release `zbase` in `zbase-system`, with its default values.
    pub fn operator() -> Self {
        Self::at(chart_dir())
    }

    /// The chart in `path`, as release `zbase` in `zbase-system`, with its default values.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            values: json!({}),
            values_files: Vec::new(),
            name: "zbase".to_owned(),
            namespace: "zbase-system".to_owned(),
        }
    }

    /// Values on top of the values files, like `--set-json` (replaces earlier inline values).
    pub fn values(mut self, values: Value) -> Self {
        self.values = values;
        self
    }

    /// A values file, like `-f FILE`; later files win, as in Helm.
    pub fn values_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.values_files.push(file.into());
        self
    }

    /// The release's name and namespace.
    pub fn release(mut self, name: &str, namespace: &str) -> Self {
        self.name = name.to_owned();
        self.namespace = namespace.to_owned();
        self
    }

    /// Renders offline as `helm template` does (values checked against the schema).
    pub fn render(&self) -> Result<Rendered> {
        let answer = run(self.request("render"))??;
        Rendered::from_answer(&answer)
    }

    /// Renders as an upgrade (`.Release.IsUpgrade`) rather than an install.
    pub fn render_upgrade(&self) -> Result<Rendered> {
        let mut request = self.request("render");
        request["is_upgrade"] = json!(true);
        let answer = run(request)??;
        Rendered::from_answer(&answer)
    }

    /// What Helm says when it refuses to render; an error if it renders, or cannot run.
    pub fn render_refused(&self) -> Result<HelmError> {
        match run(self.request("render"))? {
            Err(refusal) => Ok(refusal),
            Ok(_) => bail!("Helm rendered the chart with {}", self.describe()),
        }
    }

    /// `helm install --dry-run=client`: the whole install path (kubeVersion check included)
    /// against in-memory release storage, no cluster.
    pub fn install_dry_run(&self) -> Result<Rendered> {
        let answer = run(self.request("install"))??;
        Rendered::from_answer(&answer)
    }

    /// `helm lint --strict` with these values, for Helm's default Kubernetes version.
    pub fn lint(&self) -> Result<Lint> {
        self.lint_with(None)
    }

    /// `helm lint --strict --kube-version VERSION` with these values.
    pub fn lint_for(&self, kube_version: &str) -> Result<Lint> {
        self.lint_with(Some(kube_version))
    }

    fn lint_with(&self, kube_version: Option<&str>) -> Result<Lint> {
        let mut request = self.request("lint");
        request["strict"] = json!(true);
        if let Some(version) = kube_version {
            request["kube_version"] = json!(version);
        }
        let answer = run(request)??;
        Lint::from_answer(&answer)
    }

    fn request(&self, action: &str) -> Value {
        json!({
            "action": action,
            "chart": self.path,
            "values": self.values,
            "values_files": self.values_files,
            "name": self.name,
            "namespace": self.namespace,
        })
    }

    fn describe(&self) -> String {
        format!(
            "values files {:?} and values {}",
            self.values_files, self.values
        )
    }
}

/// One rendered Kubernetes object and the template it came from.
#[derive(Debug, Clone)]
pub struct Object {
    /// The template's path in the chart, e.g. `zbase-operator/templates/rbac.yaml`.
    pub template: String,
    /// The object as Helm's YAML reader parsed it.
    pub value: Value,
}

impl Object {
    /// Its `kind`.
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }

    /// Its `metadata.name`.
    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }

    /// Its `metadata.namespace`, empty when unset (cluster-scoped, or the release namespace).
    pub fn namespace(&self) -> &str {
        self.value["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
    }
}

/// Everything a render produced: the objects in template order, and NOTES.txt.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// Every object of every template, in template then document order.
    pub objects: Vec<Object>,
    /// The rendered NOTES.txt.
    pub notes: String,
}

impl Rendered {
    fn from_answer(answer: &Value) -> Result<Self> {
        let Some(Value::Array(objects)) = answer.get("objects") else {
            bail!("helm.py answered without objects: {answer}");
        };
        let objects = objects
            .iter()
            .map(|object| Object {
                template: object["template"].as_str().unwrap_or_default().to_owned(),
                value: object["object"].clone(),
            })
            .collect();
        let notes = answer["notes"].as_str().unwrap_or_default().to_owned();
        Ok(Self { objects, notes })
    }

    /// Every object of this kind.
    pub fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|object| object.kind() == kind)
            .map(|object| &object.value)
            .collect()
    }

    /// The object of this kind and name (in any namespace), if rendered.
    pub fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|object| object.kind() == kind && object.name() == name)
            .map(|object| &object.value)
    }

    /// The object of this kind and name in this namespace, if rendered.
    pub fn find_in(&self, kind: &str, namespace: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|object| {
                object.kind() == kind && object.namespace() == namespace && object.name() == name
            })
            .map(|object| &object.value)
    }

    /// Like [`Rendered::find`], but an error listing what was rendered instead.
    pub fn get(&self, kind: &str, name: &str) -> Result<&Value> {
        self.find(kind, name)
            .ok_or_else(|| anyhow!("no {kind} {name} rendered; rendered:\n{}", self.summary()))
    }

    /// The one object of this kind; an error if there are none or several.
    pub fn only(&self, kind: &str) -> Result<&Value> {
        match self.all(kind).as_slice() {
            [object] => Ok(object),
            others => bail!(
                "{} {kind} objects rendered, one expected; rendered:\n{}",
                others.len(),
                self.summary()
            ),
        }
    }

    /// The operator's container: the first container of the only Deployment.
    pub fn operator_container(&self) -> Result<&Value> {
        let deployment = self.only("Deployment")?;
        match &deployment["spec"]["template"]["spec"]["containers"][0] {
            Value::Null => bail!("the Deployment has no container: {deployment}"),
            container => Ok(container),
        }
    }

    /// The kinds rendered.
    pub fn kinds(&self) -> BTreeSet<&str> {
        self.objects.iter().map(Object::kind).collect()
    }

    /// One `Kind namespace/name (template)` line per object, for failure messages.
    pub fn summary(&self) -> String {
        self.objects
            .iter()
            .map(|object| {
                format!(
                    "  {} {}/{} ({})",
                    object.kind(),
                    object.namespace(),
                    object.name(),
                    object.template
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// One finding of `helm lint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintMessage {
    /// 1 info, 2 warning, 3 error (0 unknown), as Helm numbers them.
    pub severity: u64,
    /// The chart file it is about.
    pub path: String,
    /// What is wrong.
    pub error: String,
}

/// The report of `helm lint`.
#[derive(Debug, Clone, Default)]
pub struct Lint {
    /// What failed the lint (with `--strict`, warnings too).
    pub errors: Vec<String>,
    /// Every finding, informational ones included.
    pub messages: Vec<LintMessage>,
}

impl Lint {
    fn from_answer(answer: &Value) -> Result<Self> {
        let strings = |value: &Value| -> Vec<String> {
            value
                .as_array()
                .into_iter()
                .flatten()
                .map(|item| {
                    item.as_str()
                        .map_or_else(|| item.to_string(), str::to_owned)
                })
                .collect()
        };
        let messages = answer["messages"]
            .as_array()
            .ok_or_else(|| anyhow!("helm.py answered without lint messages: {answer}"))?
            .iter()
            .map(|message| LintMessage {
                severity: message["severity"].as_u64().unwrap_or_default(),
                path: message["path"].as_str().unwrap_or_default().to_owned(),
                error: message["error"].as_str().unwrap_or_default().to_owned(),
            })
            .collect();
        Ok(Self {
            errors: strings(&answer["errors"]),
            messages,
        })
    }

    /// The findings of warning severity or worse.
    pub fn warnings(&self) -> Vec<&LintMessage> {
        self.messages
            .iter()
            .filter(|message| message.severity >= 2)
            .collect()
    }

    /// No errors and no warnings (informational findings allowed).
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty() && self.warnings().is_empty()
    }
}

impl fmt::Display for Lint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for error in &self.errors {
            writeln!(f, "error: {}", error.trim_end())?;
        }
        for message in &self.messages {
            let severity = match message.severity {
                1 => "info",
                2 => "warning",
                3 => "error",
                _ => "unknown",
            };
            writeln!(
                f,
                "[{severity}] {}: {}",
                message.path,
                message.error.trim_end()
            )?;
        }
        Ok(())
    }
}

/// Sends one request to `tests/helm/helm.py`: `Ok(Err(_))` when Helm refused it, `Err(_)`
/// when the script could not run or broke.
fn run(request: Value) -> Result<Result<Value, HelmError>> {
    let python = python()?;
    let script = workspace_root().join("tests/helm/helm.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .current_dir(workspace_root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {} {}", python.display(), script.display()))?;
    // The script reads all its input before it writes, so this cannot deadlock.
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("no stdin for {}", script.display()))?
        .write_all(request.to_string().as_bytes())
        .context("sending the request to helm.py")?;
    let output = child.wait_with_output().context("waiting for helm.py")?;
    if !output.status.success() {
        bail!(
            "{} {} failed ({}) on {request}:\n{}",
            python.display(),
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let answer: Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "helm.py answered with no JSON: {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })?;
    if let Some(ok) = answer.get("ok") {
        return Ok(Ok(ok.clone()));
    }
    match answer.get("error") {
        Some(error) => Ok(Err(HelmError {
            kind: error["kind"].as_str().unwrap_or("HelmError").to_owned(),
            message: error["message"].as_str().unwrap_or_default().to_owned(),
        })),
        None => bail!("helm.py answered neither ok nor error: {answer}"),
    }
}
