//! `sotalign-tui`: the terminal client. Not implemented yet (see issue 5).
fn main() -> anyhow::Result<()> {
    anyhow::bail!("sotalign-tui is not implemented yet")
}
