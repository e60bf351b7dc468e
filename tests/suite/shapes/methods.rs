//! Methods with `&self` and `&mut self` and associated functions, in an `impl` that carries
//! `#[tiered_cache]`; companions are associated functions of the same impl.
use tiered::tiered_cache;

pub struct Repo {
    tenant: String,
    reads: u32,
}

#[tiered_cache]
impl Repo {
    #[tiered_cache(key = "repo:<self.tenant>:<id>")]
    pub async fn get(&self, id: u32) -> String {
        format!("{}/{id}", self.tenant)
    }

    #[tiered_cache(key = "count:<id>")]
    async fn count(&mut self, id: u32) -> u32 {
        self.reads += 1;
        id
    }

    #[tiered_cache]
    async fn default_key(&self, a: u8, b: String) -> Option<String> {
        Some(format!("{a}{b}"))
    }

    /// An associated function without a receiver.
    #[tiered_cache(key = "by-id:<id>")]
    async fn by_id(id: u32) -> u32 {
        id
    }
}

#[tokio::test(flavor = "current_thread")]
async fn every_shape_compiles_and_runs() {
    let mut repo = Repo {
        tenant: "t".into(),
        reads: 0,
    };
    assert_eq!(repo.get(1).await, "t/1");
    assert_eq!(repo.count(2).await, 2);
    assert_eq!(repo.default_key(1, "x".into()).await.as_deref(), Some("1x"));
    repo.invalidate_get(1).await.unwrap();
    Repo::invalidate_count(2).await.unwrap();
    Repo::invalidate_default_key(1, "x".into()).await.unwrap();
    assert_eq!(Repo::by_id(3).await, 3);
    Repo::invalidate_by_id(3).await.unwrap();
    Repo::invalidate_all_by_id().await.unwrap();
}
