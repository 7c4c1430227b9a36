//! Private rooms: what keeps a keyed earshot room's audio secret and its control unforgeable.
//!
//! Pure: no sockets, no clock (time comes in as `now`). The pieces, in the order a room uses
//! them:
//! - [`keyfile`]: the pre-shared room key on disk ([`gen_key`], [`load_key`]).
//! - [`Initiator`] / [`respond`]: the Noise `NNpsk0` handshake carried in `Join.noise` and
//!   `Welcome.noise`. Message 2's payload carries the current stream key; both sides come out
//!   with a [`Session`], one key per direction for control messages.
//! - [`StreamKey`]: the key every listener shares for audio, so the server encrypts each tick
//!   once and the fan-out stays shared. [`Keyring`] holds a listener's stream keys across a
//!   rotation; [`Rotation`] decides on the server when to announce and when to switch.
//! - [`ReplayWindow`]: every key refuses a sequence number it has already opened.
//!
//! The envelope (`Sealed { key_id, inner_type, ciphertext }`): ChaCha20-Poly1305 with empty
//! associated data, ciphertext = encrypted inner body ‖ 16-byte tag, and the 96-bit nonce =
//! 4 zero bytes ‖ the little-endian u64 [`nonce`]`(inner_type, seq)`, `seq` being the
//! datagram's header seq. The inner type and seq are therefore authenticated without being
//! encrypted. All cryptography is snow's (ChaCha20-Poly1305, X25519, BLAKE2s).

pub mod keyfile;
mod replay;
pub mod wire;

use std::time::{Duration, Instant};

use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::{HandshakeState, StatelessTransportState};

pub use keyfile::{KeyFileError, RoomKey, gen_key, load_key};
pub use replay::{REPLAY_WINDOW, Replay, ReplayWindow};

/// Bytes in a room key, a stream key and a session key.
pub const KEY_LEN: usize = 32;
/// Bytes the Poly1305 tag adds to every sealed body.
pub const TAG_LEN: usize = 16;
/// The Noise protocol name: no static keys, the room key mixed in before the first message.
pub const NOISE_PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// Bound into both handshake hashes, so a handshake for anything else never completes here.
const PROLOGUE: &[u8] = b"earshot v2 private room";
/// Bytes of Noise message 1 (`Join.noise`): an ephemeral key and an empty sealed payload.
pub const MSG1_LEN: usize = 32 + TAG_LEN;
/// Bytes of Noise message 2 (`Welcome.noise`): an ephemeral key and the sealed stream key.
pub const MSG2_LEN: usize = 32 + STREAM_KEY_PAYLOAD + TAG_LEN;
const STREAM_KEY_PAYLOAD: usize = 4 + KEY_LEN;
/// The sequence-number bits of a nonce; the top 8 bits hold the inner type.
pub const SEQ_MASK: u64 = (1 << 56) - 1;

/// The AEAD nonce counter of a sealed datagram: `(inner_type << 56) | (seq & SEQ_MASK)`.
///
/// Different inner types never share a nonce (a `Resent` carries its `Audio`'s seq).
pub fn nonce(inner_type: u8, seq: u64) -> u64 {
    (u64::from(inner_type) << 56) | (seq & SEQ_MASK)
}

/// Why a handshake message or a sealed datagram was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The handshake failed: the peer holds a different room key, or the message is not Noise.
    #[error("the room key did not match")]
    BadKey,
    /// The ciphertext did not verify under the key: forged, tampered or truncated.
    #[error("authentication failed")]
    Forged,
    /// Shorter than a tag, or longer than a datagram can be.
    #[error("sealed body of {0} bytes")]
    BadLength(usize),
    /// No key with this id (never announced, or retired after a rotation).
    #[error("unknown key id {0}")]
    UnknownKey(u32),
    /// A sequence number this key already opened, or one too old to tell.
    #[error("replayed datagram ({0:?})")]
    Replayed(Replay),
    /// The operating system's random generator or the Noise library failed.
    #[error("noise: {0}")]
    Noise(String),
}

/// Largest body a sealed datagram can carry (a Noise message's limit, above any UDP payload).
const MAX_SEALED: usize = 65_535;

fn chacha(key: &[u8; KEY_LEN]) -> Box<dyn snow::types::Cipher> {
    // The default resolver always has ChaChaPoly with the `use-chacha20poly1305` feature.
    let mut cipher = DefaultResolver
        .resolve_cipher(&snow::params::CipherChoice::ChaChaPoly)
        .unwrap_or_else(|| unreachable!("snow built with use-chacha20poly1305"));
    cipher.set(key);
    cipher
}

/// Replay windows per inner type: each type has its own seq space under one key.
#[derive(Debug, Default, Clone)]
struct Windows(Vec<(u8, ReplayWindow)>);

impl Windows {
    fn check(&self, inner_type: u8, seq: u64) -> Result<(), SealError> {
        match self.0.iter().find(|(t, _)| *t == inner_type) {
            Some((_, w)) => w.check(seq).map_err(SealError::Replayed),
            None => Ok(()),
        }
    }

    fn commit(&mut self, inner_type: u8, seq: u64) {
        if let Some((_, w)) = self.0.iter_mut().find(|(t, _)| *t == inner_type) {
            w.commit(seq);
        } else {
            let mut w = ReplayWindow::new();
            w.commit(seq);
            self.0.push((inner_type, w));
        }
    }
}

fn check_len(ciphertext: &[u8]) -> Result<(), SealError> {
    if ciphertext.len() < TAG_LEN || ciphertext.len() > MAX_SEALED {
        Err(SealError::BadLength(ciphertext.len()))
    } else {
        Ok(())
    }
}

/// A stream key: the one key every listener of a room shares for `Audio`, `Parity` and
/// `Resent`, identified on the wire by its epoch `id`.
pub struct StreamKey {
    id: u32,
    bytes: [u8; KEY_LEN],
    cipher: Box<dyn snow::types::Cipher>,
}

impl std::fmt::Debug for StreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Clone for StreamKey {
    fn clone(&self) -> Self {
        Self::from_bytes(self.id, self.bytes)
    }
}

impl StreamKey {
    /// A fresh random stream key for epoch `id`.
    pub fn generate(id: u32) -> Result<Self, SealError> {
        let mut bytes = [0u8; KEY_LEN];
        use rand::TryRngCore;
        rand::rngs::OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| SealError::Noise(e.to_string()))?;
        Ok(Self::from_bytes(id, bytes))
    }

    /// The stream key with these bytes, as received in a `Welcome` or a `Rekey`.
    pub fn from_bytes(id: u32, bytes: [u8; KEY_LEN]) -> Self {
        Self {
            id,
            bytes,
            cipher: chacha(&bytes),
        }
    }

    /// The epoch, sent as `Sealed.key_id`.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The raw key, for a `Rekey` message (which itself travels sealed under a session key).
    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    /// Appends the sealed `body` (body.len() + [`TAG_LEN`] bytes) to `out`.
    pub fn seal(&self, inner_type: u8, seq: u64, body: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + body.len() + TAG_LEN, 0);
        let n = self
            .cipher
            .encrypt(nonce(inner_type, seq), &[], body, &mut out[start..]);
        debug_assert_eq!(n, body.len() + TAG_LEN);
    }

    /// Opens `ciphertext` into `out` (cleared first), without any replay check.
    fn open_into(
        &self,
        inner_type: u8,
        seq: u64,
        ciphertext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        check_len(ciphertext)?;
        out.clear();
        out.resize(ciphertext.len() - TAG_LEN, 0);
        match self
            .cipher
            .decrypt(nonce(inner_type, seq), &[], ciphertext, out)
        {
            Ok(_) => Ok(()),
            Err(_) => {
                out.clear();
                Err(SealError::Forged)
            }
        }
    }
}

/// A handshake in progress on the listener's side.
pub struct Initiator {
    state: HandshakeState,
}

fn builder(psk: &RoomKey) -> Result<snow::Builder<'_>, SealError> {
    let params = NOISE_PATTERN
        .parse()
        .map_err(|e: snow::Error| SealError::Noise(e.to_string()))?;
    snow::Builder::new(params)
        .prologue(PROLOGUE)
        .and_then(|b| b.psk(0, &psk.0))
        .map_err(|e| SealError::Noise(e.to_string()))
}

impl Initiator {
    /// Starts a handshake: returns the state and message 1, the `Join.noise` bytes.
    pub fn start(psk: &RoomKey) -> Result<(Self, Vec<u8>), SealError> {
        let mut state = builder(psk)?
            .build_initiator()
            .map_err(|e| SealError::Noise(e.to_string()))?;
        let mut msg = vec![0u8; MSG1_LEN + 64];
        let n = state
            .write_message(&[], &mut msg)
            .map_err(|e| SealError::Noise(e.to_string()))?;
        msg.truncate(n);
        Ok((Self { state }, msg))
    }

    /// Reads message 2 (`Welcome.noise`): the session keys and the room's current stream key.
    /// Fails with [`SealError::BadKey`] when the server holds another room key.
    pub fn finish(mut self, msg2: &[u8]) -> Result<(Session, StreamKey), SealError> {
        if msg2.len() != MSG2_LEN {
            return Err(SealError::BadKey);
        }
        let mut payload = [0u8; MSG2_LEN];
        let n = self
            .state
            .read_message(msg2, &mut payload)
            .map_err(|_| SealError::BadKey)?;
        if n != STREAM_KEY_PAYLOAD || !self.state.is_handshake_finished() {
            return Err(SealError::BadKey);
        }
        let mut id = [0u8; 4];
        id.copy_from_slice(&payload[..4]);
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(&payload[4..STREAM_KEY_PAYLOAD]);
        let transport = self
            .state
            .into_stateless_transport_mode()
            .map_err(|e| SealError::Noise(e.to_string()))?;
        Ok((
            Session::new(transport),
            StreamKey::from_bytes(u32::from_le_bytes(id), key),
        ))
    }
}

/// The server's side of the handshake: reads message 1 (`Join.noise`) and returns message 2
/// (`Welcome.noise`, carrying `stream`) with the new session. Fails with
/// [`SealError::BadKey`] when the listener holds another room key or sent no Noise message.
pub fn respond(
    psk: &RoomKey,
    msg1: &[u8],
    stream: &StreamKey,
) -> Result<(Vec<u8>, Session), SealError> {
    if msg1.len() != MSG1_LEN {
        return Err(SealError::BadKey);
    }
    let mut state = builder(psk)?
        .build_responder()
        .map_err(|e| SealError::Noise(e.to_string()))?;
    let mut scratch = [0u8; MSG1_LEN];
    let n = state
        .read_message(msg1, &mut scratch)
        .map_err(|_| SealError::BadKey)?;
    if n != 0 {
        return Err(SealError::BadKey);
    }
    let mut payload = [0u8; STREAM_KEY_PAYLOAD];
    payload[..4].copy_from_slice(&stream.id.to_le_bytes());
    payload[4..].copy_from_slice(&stream.bytes);
    let mut msg2 = vec![0u8; MSG2_LEN + 64];
    let n = state
        .write_message(&payload, &mut msg2)
        .map_err(|e| SealError::Noise(e.to_string()))?;
    msg2.truncate(n);
    let transport = state
        .into_stateless_transport_mode()
        .map_err(|e| SealError::Noise(e.to_string()))?;
    Ok((msg2, Session::new(transport)))
}

/// One listener's session keys: one per direction, from the handshake, for control messages
/// (Report, Leave, Nack, TimeRequest one way; Rekey, End, Error, TimeResponse the other),
/// with a replay window on what it opens.
pub struct Session {
    transport: StatelessTransportState,
    windows: Windows,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("initiator", &self.transport.is_initiator())
            .finish_non_exhaustive()
    }
}

/// `Sealed.key_id` of a message a listener seals under its session key.
pub const LISTENER_KEY_ID: u32 = 0x8000_0000;
/// `Sealed.key_id` of a message the server seals under a listener's session key.
pub const SERVER_KEY_ID: u32 = 0x8000_0001;
/// Stream key ids are below this (they count up from 0 and wrap back to 0 here); ids from it
/// up name session keys.
pub const STREAM_KEY_IDS: u32 = 0x8000_0000;

impl Session {
    fn new(transport: StatelessTransportState) -> Self {
        Self {
            transport,
            windows: Windows::default(),
        }
    }

    /// Appends the sealed `body` (body.len() + [`TAG_LEN`] bytes) to `out`, under this side's
    /// sending key.
    pub fn seal(&self, inner_type: u8, seq: u64, body: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + body.len() + TAG_LEN, 0);
        let sealed = self
            .transport
            .write_message(nonce(inner_type, seq), body, &mut out[start..]);
        // Only a body over 64 KiB fails, and no datagram is that large.
        if sealed.is_err() {
            out.truncate(start);
        }
    }

    /// Opens a datagram sealed by the peer into `out`; refuses forgeries and replays, and
    /// records the seq only once the tag verified. The tag is checked first, so `Replayed`
    /// means an authentic copy of what already opened: anything tampered with is `Forged`.
    pub fn open(
        &mut self,
        inner_type: u8,
        seq: u64,
        ciphertext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        check_len(ciphertext)?;
        let fresh = self.windows.check(inner_type, seq);
        out.clear();
        out.resize(ciphertext.len() - TAG_LEN, 0);
        if self
            .transport
            .read_message(nonce(inner_type, seq), ciphertext, out)
            .is_err()
        {
            out.clear();
            return Err(SealError::Forged);
        }
        if let Err(replayed) = fresh {
            out.clear();
            return Err(replayed);
        }
        self.windows.commit(inner_type, seq);
        Ok(())
    }
}

/// The server's side of one joined listener: its session, and the handshake it came from, so
/// a retransmitted `Join` (the same message 1, its `Welcome` lost) gets the same message 2 and
/// the listener finishes with the keys the server kept.
pub struct ServerSession {
    session: Session,
    msg1: Vec<u8>,
    msg2: Vec<u8>,
}

impl std::fmt::Debug for ServerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSession").finish_non_exhaustive()
    }
}

impl ServerSession {
    /// Runs [`respond`] on `Join.noise`; fails with [`SealError::BadKey`] for a listener
    /// without the room key.
    pub fn accept(psk: &RoomKey, msg1: &[u8], stream: &StreamKey) -> Result<Self, SealError> {
        let (msg2, session) = respond(psk, msg1, stream)?;
        Ok(Self {
            session,
            msg1: msg1.to_vec(),
            msg2,
        })
    }

    /// Whether `msg1` is the handshake this session came from (a retransmitted `Join`).
    pub fn is_same_handshake(&self, msg1: &[u8]) -> bool {
        self.msg1 == msg1
    }

    /// Message 2, for `Welcome.noise` (again, for a retransmitted `Join`).
    pub fn welcome_noise(&self) -> &[u8] {
        &self.msg2
    }

    /// Seals a control message to this listener (sent with `key_id` [`SERVER_KEY_ID`]).
    pub fn seal(&self, inner_type: u8, seq: u64, body: &[u8], out: &mut Vec<u8>) {
        self.session.seal(inner_type, seq, body, out);
    }

    /// Opens a control message from this listener, refusing forgeries and replays.
    pub fn open(
        &mut self,
        inner_type: u8,
        seq: u64,
        ciphertext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        self.session.open(inner_type, seq, ciphertext, out)
    }
}

/// Everything a joined listener of a private room holds: its session (control, both ways)
/// and its stream keys (audio), told apart on the wire by `Sealed.key_id`
/// ([`SERVER_KEY_ID`] for the session, below [`STREAM_KEY_IDS`] for a stream key).
#[derive(Debug)]
pub struct ListenerKeys {
    session: Session,
    stream: Keyring,
}

impl ListenerKeys {
    /// The keys [`Initiator::finish`] returned; `overlap` as for [`Keyring::new`].
    pub fn new(session: Session, first: StreamKey, overlap: Duration) -> Self {
        Self {
            session,
            stream: Keyring::new(first, overlap),
        }
    }

    /// Opens a datagram from the server: under the session key when `key_id` is
    /// [`SERVER_KEY_ID`], else under that stream key.
    pub fn open(
        &mut self,
        now: Instant,
        key_id: u32,
        inner_type: u8,
        seq: u64,
        ciphertext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        if key_id == SERVER_KEY_ID {
            self.session.open(inner_type, seq, ciphertext, out)
        } else if key_id < STREAM_KEY_IDS {
            self.stream
                .open(now, key_id, inner_type, seq, ciphertext, out)
        } else {
            Err(SealError::UnknownKey(key_id))
        }
    }

    /// Seals a control message to the server under the session key (sent with
    /// `key_id` [`LISTENER_KEY_ID`]).
    pub fn seal(&self, inner_type: u8, seq: u64, body: &[u8], out: &mut Vec<u8>) {
        self.session.seal(inner_type, seq, body, out);
    }

    /// Takes the key of a `Rekey` (which arrived sealed under the session key).
    pub fn rekey(&mut self, key_id: u32, key: [u8; KEY_LEN]) {
        self.stream.insert(StreamKey::from_bytes(key_id, key));
    }

    /// The stream key ids held, oldest first.
    pub fn stream_key_ids(&self) -> Vec<u32> {
        self.stream.ids()
    }
}

/// How many stream keys a listener holds at most: the current one, the next one announced,
/// and the previous one during the overlap.
const KEYRING_MAX: usize = 3;

/// A listener's stream keys: opens `Audio`/`Parity`/`Resent` under whichever key the server
/// used, with a replay window per key.
///
/// After a rotation the previous key stays accepted until the newer one has opened datagrams
/// for `overlap` (late, reordered or retransmitted datagrams sealed before the switch), then
/// it is forgotten.
#[derive(Debug)]
pub struct Keyring {
    entries: Vec<Entry>,
    overlap: Duration,
}

#[derive(Debug)]
struct Entry {
    key: StreamKey,
    windows: Windows,
    first_used: Option<Instant>,
}

impl Keyring {
    /// A keyring holding the key from the `Welcome`.
    pub fn new(first: StreamKey, overlap: Duration) -> Self {
        Self {
            entries: vec![Entry {
                key: first,
                windows: Windows::default(),
                first_used: None,
            }],
            overlap,
        }
    }

    /// Adds a key from a `Rekey`. A key id already held, or older than every key held, is
    /// ignored; beyond three keys the oldest goes.
    pub fn insert(&mut self, key: StreamKey) {
        if self.entries.iter().any(|e| e.key.id == key.id) {
            return;
        }
        if self.entries.iter().all(|e| e.key.id > key.id) {
            return;
        }
        self.entries.push(Entry {
            key,
            windows: Windows::default(),
            first_used: None,
        });
        self.entries.sort_by_key(|e| e.key.id);
        while self.entries.len() > KEYRING_MAX {
            self.entries.remove(0);
        }
    }

    /// The key ids held, oldest first.
    pub fn ids(&self) -> Vec<u32> {
        self.entries.iter().map(|e| e.key.id).collect()
    }

    /// Opens a datagram sealed under stream key `key_id` into `out`. As with
    /// [`Session::open`], `Replayed` is only ever an authentic copy.
    pub fn open(
        &mut self,
        now: Instant,
        key_id: u32,
        inner_type: u8,
        seq: u64,
        ciphertext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        self.retire(now);
        let entry = self
            .entries
            .iter_mut()
            .find(|e| e.key.id == key_id)
            .ok_or(SealError::UnknownKey(key_id))?;
        check_len(ciphertext)?;
        let fresh = entry.windows.check(inner_type, seq);
        entry.key.open_into(inner_type, seq, ciphertext, out)?;
        if let Err(replayed) = fresh {
            out.clear();
            return Err(replayed);
        }
        entry.windows.commit(inner_type, seq);
        entry.first_used.get_or_insert(now);
        Ok(())
    }

    /// Forgets every key older than a key that has been in use for `overlap`.
    fn retire(&mut self, now: Instant) {
        let settled = self
            .entries
            .iter()
            .filter(|e| {
                e.first_used
                    .is_some_and(|t| now.saturating_duration_since(t) >= self.overlap)
            })
            .map(|e| e.key.id)
            .max();
        if let Some(settled) = settled {
            self.entries.retain(|e| e.key.id >= settled);
        }
    }
}

/// The stream key id after `id`: wraps within the stream key ids.
fn next_id(id: u32) -> u32 {
    (id + 1) % STREAM_KEY_IDS
}

/// What the server's [`Rotation`] asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationStep {
    /// Send every joined listener a `Rekey` with [`Rotation::next`] (sealed under its session
    /// key). Asked for three times across the lead, so one lost `Rekey` does not cut a
    /// listener off.
    Announce,
    /// Start sealing audio under the announced key ([`Rotation::current`] has changed).
    Switch,
}

/// The server's stream keys over time: every `period` a new key is generated, announced
/// `lead` before it is used, then used; the previous key is kept until the next switch for
/// retransmissions of what it sealed.
#[derive(Debug)]
pub struct Rotation {
    current: StreamKey,
    previous: Option<StreamKey>,
    next: Option<StreamKey>,
    period: Duration,
    lead: Duration,
    switch_at: Instant,
    announced: u8,
}

impl Rotation {
    /// Starts at epoch 0 with a fresh key; the first switch is `period` after `now`.
    /// `lead` is clamped to half the period.
    pub fn new(now: Instant, period: Duration, lead: Duration) -> Result<Self, SealError> {
        Ok(Self {
            current: StreamKey::generate(0)?,
            previous: None,
            next: None,
            period,
            lead: lead.min(period / 2),
            switch_at: now + period,
            announced: 0,
        })
    }

    /// The key audio is sealed under now (and the one a `Welcome` carries).
    pub fn current(&self) -> &StreamKey {
        &self.current
    }

    /// The key announced but not used yet: a listener joining now gets a `Rekey` with it.
    pub fn next(&self) -> Option<&StreamKey> {
        self.next.as_ref()
    }

    /// The key with this id, if still held (a retransmission seals under the original's key).
    pub fn key(&self, id: u32) -> Option<&StreamKey> {
        [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.id == id)
    }

    /// Rotates as soon as possible: announces now and switches after the lead (used when a
    /// listener is kicked, so it cannot follow the stream past the switch).
    pub fn rotate_soon(&mut self, now: Instant) {
        if self.next.is_none() {
            self.switch_at = self.switch_at.min(now + self.lead);
        }
    }

    /// When [`poll`](Self::poll) has something to do next.
    pub fn poll_timeout(&self) -> Instant {
        match self.announced {
            0..=2 => {
                let i = u32::from(self.announced);
                self.switch_at
                    .checked_sub(self.lead - self.lead / 3 * i)
                    .unwrap_or(self.switch_at)
            }
            _ => self.switch_at,
        }
    }

    /// The step due at `now`, if any. Call until it returns `None`.
    pub fn poll(&mut self, now: Instant) -> Result<Option<RotationStep>, SealError> {
        if now < self.poll_timeout() {
            return Ok(None);
        }
        if self.announced == 0 || (self.announced < 3 && now < self.switch_at) {
            if self.next.is_none() {
                self.next = Some(StreamKey::generate(next_id(self.current.id))?);
            }
            // Never switch sooner than the lead after the first announcement.
            if self.announced == 0 {
                self.switch_at = self.switch_at.max(now + self.lead);
            }
            self.announced += 1;
            return Ok(Some(RotationStep::Announce));
        }
        let next = match self.next.take() {
            Some(k) => k,
            None => StreamKey::generate(next_id(self.current.id))?,
        };
        self.previous = Some(std::mem::replace(&mut self.current, next));
        self.switch_at = now + self.period;
        self.announced = 0;
        Ok(Some(RotationStep::Switch))
    }
}

#[cfg(test)]
mod tests;
