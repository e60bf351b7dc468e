use tiered::tiered_cache;

// A tag may use only the key's placeholders.
#[tiered_cache(key = "order:<id>", tags = ["tenant:<tenant>"])]
async fn not_in_the_key(id: u32, tenant: String) -> u32 {
    let _ = tenant;
    id
}

// Tags are string literals.
#[tiered_cache(key = "a:<id>", tags = [42])]
async fn not_a_string(id: u32) -> u32 {
    id
}

// At most four.
#[tiered_cache(key = "b:<id>", tags = ["a:<id>", "b:<id>", "c:<id>", "d:<id>", "e:<id>"])]
async fn five(id: u32) -> u32 {
    id
}

// An array.
#[tiered_cache(key = "c:<id>", tags = "c:<id>")]
async fn not_an_array(id: u32) -> u32 {
    id
}

fn main() {}
