//! A hostile member against the document's admission rules (forgery, overwrite,
//! delete, inflation, junk): the longest test of `state`, in its own file.

use super::*;

/// A member with a valid key of its own (what any mesh-key holder can get) forges facts
/// in another node's name, overwrites and deletes existing facts, inflates a token,
/// writes values a local write would refuse and floods junk: none of it changes what an
/// honest node — or one that joins afterwards and never saw the originals — folds, and
/// each refusal is counted against the author it names.
#[test]
fn a_hostile_member_cannot_forge_overwrite_delete_or_inflate() {
    use crate::core::lease::ReleaseReason;
    use ed25519_dalek::SigningKey;
    let honest = Signer::from_key(SigningKey::from_bytes(&[1; 32]));
    let evil = Signer::from_key(SigningKey::from_bytes(&[2; 32]));
    let (a, e) = (honest.author().to_string(), evil.author().to_string());
    let mut doc_a = Doc::new([1; 16]).with_signer(honest.clone());
    let key = doc_a.add_story(&story("the real one"), &a, 1).unwrap();
    let res = Resource::story(&key, Phase::Research).unwrap();
    let claim = format!("{a}-1001");
    doc_a
        .put_claim(
            &claim,
            &ClaimFact {
                resources: vec![(res.clone(), 1)],
                holder: a.clone(),
                ttl_ms: 1000,
                written_at_ms: 1,
                attempt: 1,
                after: None,
            },
        )
        .unwrap();
    let result = ResultFact {
        story: key.clone(),
        phase: Phase::Research,
        round: 0,
        claim: claim.clone(),
        token: 1,
        holder: a.clone(),
        written_at_ms: 2,
        handoff: Default::default(),
        escalations: vec![],
    };
    doc_a.put_result(&result).unwrap();
    let done = ReleaseFact {
        why: ReleaseReason::Done,
        note: String::new(),
    };
    doc_a.put_release(&claim, &done, &a).unwrap();
    // A node cannot even write in another's name through its own document.
    assert!(doc_a.put_release("x-1", &done, &e).is_err());
    let before = doc_a.view();
    assert_eq!(before.stories[key.as_str()].next_phase, Some(Phase::Plan));

    let mut doc_e = Doc::new([2; 16]).with_signer(evil.clone());
    sync_pair(&mut doc_a, &mut doc_e);
    let raw = |d: &mut Doc, key: &str, value: String| {
        d.inner.put(ROOT, key, value).unwrap();
    };
    let story_doc_key = format!("{STORY_PREFIX}{key}");
    let result_key = format!("{RESULT_PREFIX}{key}/research/{claim}");
    // 1. Forgeries in A's name: E's signature under A's label.
    let mut forged_story = (*before.stories[key.as_str()].fact).clone();
    forged_story.title = "rewritten".into();
    let forged = evil
        .seal(&story_doc_key, &json(&forged_story))
        .replacen(&e, &a, 1);
    raw(&mut doc_e, &story_doc_key, forged);
    let forged_result = ResultFact {
        handoff: crate::core::model::Handoff {
            summary: "forged".into(),
            ..Default::default()
        },
        ..result.clone()
    };
    let forged = evil
        .seal(&result_key, &json(&forged_result))
        .replacen(&e, &a, 1);
    raw(&mut doc_e, &result_key, forged);
    // 2. Overwrites in E's own name, which is not entitled to those keys.
    let mut own = forged_story.clone();
    own.created_by = e.as_str().into();
    raw(
        &mut doc_e,
        &story_doc_key,
        evil.seal(&story_doc_key, &json(&own)),
    );
    let release_key = format!("{RELEASE_PREFIX}{claim}");
    let failed = ReleaseFact {
        why: ReleaseReason::Failed,
        note: "forged".into(),
    };
    raw(
        &mut doc_e,
        &release_key,
        evil.seal(&release_key, &json(&failed)),
    );
    // A takeover release of a finished claim is E's to write, and changes nothing.
    let expired = ReleaseFact {
        why: ReleaseReason::Expired,
        note: "taken".into(),
    };
    raw(
        &mut doc_e,
        &release_key,
        evil.seal(&release_key, &json(&expired)),
    );
    doc_e.inner.commit();
    // 3. Deletes.
    doc_e.inner.delete(ROOT, story_doc_key.as_str()).unwrap();
    doc_e.inner.delete(ROOT, result_key.as_str()).unwrap();
    doc_e.inner.commit();
    // 4. A token from nowhere, in E's own name: its claim is admitted, never counted.
    let plan = Resource::story(&key, Phase::Plan).unwrap();
    let inflated = ClaimFact {
        resources: vec![(plan.clone(), u64::MAX)],
        holder: e.clone(),
        ttl_ms: u64::MAX,
        written_at_ms: 3,
        attempt: 1,
        after: None,
    };
    let inflated_key = format!("{CLAIM_PREFIX}{e}-1001");
    raw(
        &mut doc_e,
        &inflated_key,
        evil.seal(&inflated_key, &json(&inflated)),
    );
    // 5. Values a local write refuses, signed by E as its own.
    let mut bad = own.clone();
    bad.number = 2;
    bad.priority = 0;
    bad.files = thin_vec::thin_vec!["../../etc/passwd".into()];
    let bad_key = format!("{STORY_PREFIX}{}", story_key(2, &e));
    raw(&mut doc_e, &bad_key, evil.seal(&bad_key, &json(&bad)));
    // 6. Junk: 10,000 values under known prefixes, unsigned or signed nonsense.
    for i in 0..10_000 {
        let k = format!("{CLAIM_PREFIX}{e}-{}", 5000 + i);
        let v = if i % 2 == 0 {
            format!("junk {i}")
        } else {
            evil.seal(&k, "{\"not\":\"a claim\"}")
        };
        raw(&mut doc_e, &k, v);
    }
    doc_e.inner.commit();
    doc_e.refresh();

    // The honest node hears all of it; a node that joins now reads only the final state.
    sync_pair(&mut doc_e, &mut doc_a);
    let mut joiner =
        Doc::new([3; 16]).with_signer(Signer::from_key(SigningKey::from_bytes(&[3; 32])));
    sync_pair(&mut doc_e, &mut joiner);
    let reloaded = Doc::load([4; 16], &doc_a.save(), &[]).unwrap();
    for (who, d) in [
        ("honest", &doc_a),
        ("joiner", &joiner),
        ("reloaded", &reloaded),
    ] {
        let mut v = d.view();
        assert!(v.malformed >= 10_000, "{who}: {}", v.malformed);
        v.malformed = 0;
        let mut b = before.clone();
        b.malformed = 0;
        assert_eq!(v, b, "{who}'s view changed");
        let by_e = &d.rejected()[&e];
        assert_eq!(
            by_e[&FactKind::Story],
            2,
            "{who}: overwrite and invalid story"
        );
        assert_eq!(
            by_e[&FactKind::Release],
            1,
            "{who}: a failure release of A's claim"
        );
        assert!(by_e[&FactKind::Claim] >= 5000, "{who}");
        assert_eq!(
            d.rejected()[&a][&FactKind::Story],
            1,
            "{who}: forged in A's name"
        );
        assert_eq!(d.rejected()[&a][&FactKind::Result], 1, "{who}");
        assert_eq!(d.rejected()["?"][&FactKind::Claim], 5000, "{who}");
    }
    // The next honest claim on the plan takes token 1, as if the inflated one were not
    // there, and wins.
    assert_eq!(doc_a.view().claims().next_token(&plan), 1);
}
