//! `zbase-operator`: the controller binary.
fn main() -> anyhow::Result<()> {
    print!("{}", zbase_operator::crd::crd_yaml()?);
    Ok(())
}
