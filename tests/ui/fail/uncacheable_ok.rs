use tiered::tiered_cache;

#[derive(Clone)]
pub struct Conn;

#[tiered_cache]
async fn connect(n: u32) -> Result<Conn, String> {
    let _ = n;
    Ok(Conn)
}

#[tiered_cache]
async fn maybe_connect(n: u32) -> Option<Conn> {
    let _ = n;
    Some(Conn)
}

fn main() {}
