//! `jwt`: the gateway's token check, as `Verifier::verify` runs it on every upgrade.
//!
//! A good token (the sample client's claims) for RS256 and ES256, and for each a token
//! whose signature belongs to other claims, which must be rejected as a bad signature.

use std::hint::black_box;
use std::time::Duration;

use benches::tokens::{mint, sample_claims, verifier, with_foreign_signature};
use criterion::{criterion_group, criterion_main, Criterion};
use gateway::auth::AuthError;
use jsonwebtoken::Algorithm;

fn jwt(c: &mut Criterion) {
    let mut group = c.benchmark_group("jwt");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (name, alg) in [("rs256", Algorithm::RS256), ("es256", Algorithm::ES256)] {
        let v = verifier(alg).expect("a verifier from certs/");
        let good = mint(alg, &sample_claims("bench-good")).expect("a signed token");
        let donor = mint(alg, &sample_claims("bench-donor")).expect("a signed token");
        let bad = with_foreign_signature(&good, &donor).expect("a spliced token");
        assert!(v.verify(&good).is_ok(), "the good {name} token verifies");
        assert_eq!(
            v.verify(&bad).err(),
            Some(AuthError::BadSignature),
            "the bad {name} token is refused"
        );

        group.bench_function(format!("{name}_valid"), |b| {
            b.iter(|| v.verify(black_box(&good)))
        });
        group.bench_function(format!("{name}_bad_signature"), |b| {
            b.iter(|| v.verify(black_box(&bad)))
        });
    }
    group.finish();
}

criterion_group!(benches, jwt);
criterion_main!(benches);
