//! Property tests of the gossip wire codec: no input makes the decoder panic, oversized frames
//! and unknown generations are refused from the header, and every message survives
//! encode → decode with its signatures intact.

use mesh_core::gossip::admission::AdmissionError;
use mesh_core::gossip::beat::{Beat, BeatChain, CHAIN_LEN};
use mesh_core::gossip::sign::{Leaving, SecretKey, Signed};
use mesh_core::gossip::wire::{
    self, DecodeError, Digest, GENERATION, HEADER_LEN, Hello, MAX_FRAME_BODY, Message, Records,
    Request,
};
use mesh_core::invite::{self, InviteError, InviteId};
use mesh_core::peer::{
    Backend, Fingerprint, ModelTiming, NativeBaseline, PeerAnnouncement, Role, RttHint,
    RunningPipeline,
};
use mesh_core::{PeerId, Timestamp};
use proptest::prelude::*;
use rand_core::SeedableRng;
use rand_pcg::Pcg64;

fn key(seed: u64) -> SecretKey {
    SecretKey::generate(&mut Pcg64::seed_from_u64(seed))
}

fn peer_id() -> impl Strategy<Value = PeerId> {
    any::<[u8; 32]>().prop_map(PeerId)
}

fn model() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,24}"
}

fn finite() -> impl Strategy<Value = f64> {
    0.0..1.0e6f64
}

prop_compose! {
    fn announcement_body()(
        role in prop_oneof![
            Just(Role::Worker),
            Just(Role::Client),
            any::<u16>().prop_map(|p| Role::Host { http_port: p }),
        ],
        backend in prop_oneof![
            Just(Backend::Metal), Just(Backend::Cuda), Just(Backend::Rocm),
            Just(Backend::Vulkan), Just(Backend::Cpu),
        ],
        seq in 1u64..u64::MAX,
        hostname in ".{0,16}",
        fast in any::<u64>(),
        ram in any::<u64>(),
        bw in finite(),
        models in prop::collection::vec(model(), 0..4),
        sizes in prop::collection::btree_map(model(), any::<u64>(), 0..4),
        rpc_ready in any::<Option<bool>>(),
        inflight in any::<u32>(),
        timings in prop::collection::vec((model(), finite(), finite(), any::<u32>()), 0..3),
        baselines in prop::collection::vec(
            (model(), finite(), finite(), any::<u64>(), any::<u32>(),
             prop::option::of(("[0-9a-f]{64}", prop::collection::vec(any::<u32>(), 0..32)))),
            0..2),
        rtts in prop::collection::vec((peer_id(), any::<u32>()), 0..4),
        pipelines in prop::collection::vec((model(), prop::collection::vec(peer_id(), 0..3), any::<u64>()), 0..2),
    ) -> (PeerAnnouncement, u64) {
        let mut a = PeerAnnouncement::new(PeerId([0; 32]), "mesh-a", role);
        a.seq = seq;
        a.backend = backend;
        a.hostname = hostname;
        a.fast_memory_bytes = fast;
        a.system_ram_bytes = ram;
        a.mem_bandwidth_gbps = bw;
        a.requested_models = models.clone();
        a.serving_models = models.clone();
        a.hosted_models = models;
        a.model_sizes = sizes;
        a.rpc_ready = rpc_ready;
        a.inflight_requests = inflight;
        a.model_timings = timings
            .into_iter()
            .map(|(model, tps_p50, ttft_ms_p50, samples_in_window)| ModelTiming {
                model, tps_p50, ttft_ms_p50, samples_in_window,
            })
            .collect();
        a.native_baselines = baselines
            .into_iter()
            .map(|(model, tps, ttft, at, samples, fp)| NativeBaseline {
                model,
                native_tps_p50: tps,
                native_ttft_ms_p50: ttft,
                measured_at_unix_secs: at,
                samples,
                backend,
                fingerprint: fp.map(|(output_hash, token_ids)| Fingerprint {
                    output_hash,
                    top_k: token_ids.iter().map(|t| vec![*t, t.wrapping_add(1)]).collect(),
                    token_ids,
                }),
            })
            .collect();
        a.rtt_hints = rtts.into_iter().map(|(peer, rtt_ms)| RttHint { peer, rtt_ms }).collect();
        a.pipelines = pipelines
            .into_iter()
            .map(|(model, workers, total_group_memory_bytes)| RunningPipeline {
                model, workers, total_group_memory_bytes,
            })
            .collect();
        (a, seq)
    }
}

fn signed_announcement() -> impl Strategy<Value = Signed<PeerAnnouncement>> {
    (announcement_body(), 0u64..8).prop_map(|((mut a, _), k)| {
        let key = key(k);
        a.peer_id = key.peer_id();
        Signed::sign(&key, a)
    })
}

fn heartbeat() -> impl Strategy<Value = Beat> {
    (0u64..8, 0u64..u64::MAX / 2, 1..=CHAIN_LEN).prop_map(|(k, content_seq, n)| {
        let key = key(k);
        BeatChain::new(&key, content_seq).beat(key.peer_id().short_id(), n)
    })
}

/// Whether `b` is on the chain its origin (one of the generated keys) anchors for its content.
fn beat_verifies(b: &Beat) -> bool {
    (0u64..8)
        .map(key)
        .find(|k| k.peer_id().short_id() == b.peer)
        .is_some_and(|k| b.verifies_against_anchor(&BeatChain::new(&k, b.content_seq).anchor()))
}

fn leaving() -> impl Strategy<Value = Signed<Leaving>> {
    (0u64..8, any::<u64>()).prop_map(|(k, seq)| {
        let key = key(k);
        Signed::sign(
            &key,
            Leaving {
                peer: key.peer_id(),
                mesh_id: "mesh-a".into(),
                seq,
            },
        )
    })
}

fn invite_strategy() -> impl Strategy<Value = invite::Invite> {
    (
        0u64..8,
        prop::collection::vec(any::<u8>(), 0..64),
        any::<u64>(),
    )
        .prop_map(|(k, addr, t)| {
            invite::mint(
                &key(k),
                "mesh-a",
                addr,
                invite::DEFAULT_TTL,
                Timestamp::from_micros(t / 2),
                &mut Pcg64::seed_from_u64(t),
            )
        })
}

fn records() -> impl Strategy<Value = Records> {
    (
        prop::collection::vec(signed_announcement(), 0..3),
        prop::collection::vec(heartbeat(), 0..3),
        prop::collection::vec(leaving(), 0..2),
        prop::collection::vec((0u64..8, any::<[u8; 16]>(), any::<u64>()), 0..2),
    )
        .prop_map(|(announcements, heartbeats, leavings, revs)| Records {
            announcements,
            heartbeats,
            leavings,
            revocations: revs
                .into_iter()
                .map(|(k, id, t)| {
                    invite::revoke(&key(k), "mesh-a", InviteId(id), Timestamp::from_micros(t))
                })
                .collect(),
        })
}

fn refusal() -> impl Strategy<Value = AdmissionError> {
    prop_oneof![
        Just(AdmissionError::NotAdmitted),
        Just(AdmissionError::MissingInvite),
        Just(AdmissionError::BadAnnouncementSignature),
        (peer_id(), peer_id()).prop_map(|(claimed, transport)| AdmissionError::IdentityMismatch {
            claimed,
            transport
        }),
        (any::<u64>(), any::<u64>()).prop_map(|(a, b)| AdmissionError::Invite(
            InviteError::Expired {
                expires_at: Timestamp::from_micros(a),
                now: Timestamp::from_micros(b),
            }
        )),
        ".{0,12}".prop_map(|m| AdmissionError::Invite(InviteError::WrongMesh {
            expected: "mesh-a".into(),
            found: m,
        })),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            signed_announcement(),
            prop::option::of(invite_strategy()),
            any::<bool>()
        )
            .prop_map(|(announcement, invite, passive)| Message::Hello(Hello {
                announcement,
                invite,
                passive
            })),
        refusal().prop_map(Message::Refused),
        (
            any::<u64>(),
            prop::collection::vec((any::<[u8; 8]>(), any::<u64>()), 0..20),
            prop::collection::vec((peer_id(), any::<[u8; 16]>().prop_map(InviteId)), 0..3),
            any::<bool>()
        )
            .prop_map(
                |(base, entries, revocations, passive)| Message::Digest(Digest {
                    base,
                    entries,
                    revocations,
                    passive
                })
            ),
        (
            prop::collection::vec((any::<[u8; 8]>(), any::<u64>()), 0..10),
            prop::collection::vec((peer_id(), any::<[u8; 16]>().prop_map(InviteId)), 0..3)
        )
            .prop_map(|(peers, revocations)| Message::Request(Request { peers, revocations })),
        records().prop_map(Message::Records),
        records().prop_map(Message::Rumor),
        peer_id().prop_map(Message::PeerDown),
    ]
}

fn frame_of(body: &[u8]) -> Vec<u8> {
    let mut f = vec![GENERATION];
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok((m, used)) = wire::decode(&bytes) {
            prop_assert!(used <= bytes.len());
            // Whatever decodes re-encodes to something that decodes the same.
            let again = wire::encode(&m).unwrap();
            prop_assert_eq!(wire::decode(&again).unwrap().0, m);
        }
    }

    #[test]
    fn decoder_never_panics_on_arbitrary_bodies_behind_a_valid_header(
        body in prop::collection::vec(any::<u8>(), 0..2048)
    ) {
        let _ = wire::decode(&frame_of(&body));
        let _ = wire::decode_body(&body);
    }

    #[test]
    fn every_message_survives_encode_then_decode_with_valid_signatures(m in message()) {
        let frame = wire::encode(&m).unwrap();
        let (back, used) = wire::decode(&frame).unwrap();
        prop_assert_eq!(used, frame.len());
        prop_assert_eq!(&back, &m);
        let records = match &back {
            Message::Records(r) | Message::Rumor(r) => Some(r),
            _ => None,
        };
        if let Some(r) = records {
            prop_assert!(r.announcements.iter().all(|a| a.verify()));
            prop_assert!(r.heartbeats.iter().all(beat_verifies));
            prop_assert!(r.leavings.iter().all(|l| l.verify()));
            prop_assert!(r.revocations.iter().all(|x| x.verify()));
        }
        if let Message::Hello(h) = &back {
            prop_assert!(h.announcement.verify());
            prop_assert!(h.invite.as_ref().is_none_or(|i| i.verify()));
        }
    }

    #[test]
    fn mutated_frames_never_panic_and_never_verify_altered_records(
        m in message(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let original = wire::encode(&m).unwrap();
        let mut frame = original.clone();
        for (at, x) in &flips {
            let i = HEADER_LEN + at.index(frame.len() - HEADER_LEN);
            if i < frame.len() {
                frame[i] ^= x | 1;
            }
        }
        if truncate {
            frame.truncate(cut.index(frame.len() + 1));
        }
        if let Ok((Message::Records(r) | Message::Rumor(r), _)) = wire::decode(&frame) {
            // A record that decodes differently from every original one must not verify.
            let (Message::Records(orig) | Message::Rumor(orig)) = &m else {
                return Err(TestCaseError::fail("kind changed yet decoded as records"));
            };
            for a in &r.announcements {
                if !orig.announcements.contains(a) {
                    prop_assert!(!a.verify(), "altered announcement verified");
                }
            }
            for h in &r.heartbeats {
                if !orig.heartbeats.contains(h) {
                    prop_assert!(!beat_verifies(h), "altered heartbeat verified");
                }
            }
        }
    }

    #[test]
    fn any_header_over_the_cap_is_oversized_before_the_body(
        len in (MAX_FRAME_BODY as u32 + 1)..=u32::MAX,
        tail in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut frame = vec![GENERATION];
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&tail);
        prop_assert_eq!(
            wire::decode(&frame),
            Err(DecodeError::Oversized { len: len as usize, max: MAX_FRAME_BODY })
        );
    }

    #[test]
    fn any_other_generation_is_refused(g in any::<u8>(), rest in prop::collection::vec(any::<u8>(), 0..64)) {
        prop_assume!(g != GENERATION);
        let mut frame = vec![g];
        frame.extend_from_slice(&rest);
        prop_assert_eq!(wire::decode(&frame), Err(DecodeError::UnknownGeneration(g)));
    }

    #[test]
    fn invite_text_parser_never_panics(text in ".{0,200}", b32 in "[a-z2-7]{0,300}") {
        let _ = invite::Invite::from_text(&text);
        let _ = invite::Invite::from_text(&format!("{}{b32}", invite::TEXT_PREFIX));
    }
}

#[test]
fn frame_exactly_at_the_cap_passes_the_header_check() {
    let mut header = vec![GENERATION];
    header.extend_from_slice(&(MAX_FRAME_BODY as u32).to_be_bytes());
    assert_eq!(wire::decode_header(&header), Ok(MAX_FRAME_BODY));
    // ... and its (absent) body is merely truncated, never read past the buffer.
    assert!(matches!(
        wire::decode(&header),
        Err(DecodeError::Truncated { .. })
    ));
}

#[test]
fn a_full_8_mib_body_of_garbage_is_malformed_not_a_panic() {
    let body = vec![0xffu8; MAX_FRAME_BODY];
    assert!(matches!(
        wire::decode(&frame_of(&body)),
        Err(DecodeError::Malformed(_))
    ));
}
