//! TLS records after the handshake, on the keys rustls's kernel-connection API (the one
//! kTLS offload is built on) hands over: sealed with aws-lc's AEADs, opened with rustls's
//! record decrypters, without rustls's connection state machine around every read and
//! write.
//!
//! rustls runs the handshake and derives every key, key updates included; what is left
//! here is the record layer of a server that has finished its handshake (RFC 8446 §5 for
//! TLS 1.3, RFC 5246 §6.2 for TLS 1.2): record headers, sequence numbers, and the kinds of
//! record a client may send then: application data, alerts (`close_notify` ends its
//! stream) and, in TLS 1.3, `KeyUpdate`. A write is one record per 16 KiB, sealed with
//! aws-lc's AEAD into the caller's buffer with no allocation of its own: TLS 1.3's AES-GCM
//! (what browsers ask for first) by aws-lc's TLS 1.3 record key straight from the
//! caller's plaintext, everything else after one copy into place. A read opens records in
//! place where they were read.

use aws_lc_rs::aead;
use rustls::crypto::cipher::{AeadKey, InboundOpaqueMessage, Iv, MessageDecrypter, Nonce};
use rustls::kernel::KernelConnection;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::{
    AlertDescription, ConnectionTrafficSecrets, ContentType, Error, HandshakeType, PeerMisbehaved,
    ProtocolVersion, SupportedCipherSuite, Tls12CipherSuite, Tls13CipherSuite,
};

/// Largest plaintext in one record (RFC 8446 §5.1).
const MAX_PLAINTEXT: usize = 16 * 1024;
/// Largest record body a peer may send: plaintext, content type, padding and tag
/// (RFC 8446 §5.2).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// A record's header: content type, legacy version, length.
pub const HEADER_LEN: usize = 5;

/// Most bytes one record adds to its plaintext: the header, and a 16-byte tag with the
/// inner content type (TLS 1.3) or TLS 1.2 AES-GCM's 8-byte explicit nonce.
pub const RECORD_OVERHEAD: usize = HEADER_LEN + 8 + 16;

/// Why a TLS 1.2 connection whose key has sealed as many records as is safe takes no more
/// data: its writer then ends it with `close_notify`.
const KEY_SPENT: &str = "the TLS 1.2 connection's key has sealed as many records as is safe";

/// A `KeyUpdate` message with `update_not_requested`.
const KEY_UPDATE: [u8; 5] = [24, 0, 0, 1, 0];

/// Room for the gateway's own small records sealed at once: an alert or a `KeyUpdate`,
/// after a `KeyUpdate` at the key's limit (each under 32 bytes).
const SMALL_RECORDS: usize = 128;

/// Most bytes sealing adds to one write's plaintext of up to 64 KiB: each of its records'
/// header, tag and inner content type (TLS 1.3) or explicit nonce (TLS 1.2's AES-GCM),
/// and two `KeyUpdate` records.
pub const SEAL_OVERHEAD: usize = 1024;

/// The record layer of one TLS 1.3 server connection; see the module docs.
pub struct Records {
    kernel: KernelConnection<ServerConnectionData>,
    suite: Suite,
    seal: Sealer,
    seal_seq: u64,
    open: Box<dyn MessageDecrypter>,
    open_seq: u64,
    /// The client asked for a key update: ours goes out before our next record.
    update_due: bool,
    /// Records one sending key may seal: the suite's confidentiality limit.
    seal_limit: u64,
    /// Warning alerts the client may still send (a few, as rustls and BoringSSL allow).
    warnings_left: u8,
    /// `KeyUpdate`s the client may still send before its next application data.
    key_updates_left: u8,
}

/// Warning alerts a client may send in a connection's life (rustls's and BoringSSL's
/// figure): each is ignored, but a stream of them is no way to use a connection.
const WARNING_ALERTS: u8 = 4;
/// `KeyUpdate`s a client may send in a row without application data between them
/// (rustls's and BoringSSL's figure): each costs a key derivation.
const KEY_UPDATES: u8 = 32;

/// The negotiated suite, which also says which version's record rules apply.
#[derive(Clone, Copy)]
enum Suite {
    Tls13(&'static Tls13CipherSuite),
    Tls12(&'static Tls12CipherSuite),
}

/// What opening the records at the front of a buffer came to.
#[derive(Debug, Default)]
pub struct Opened {
    /// Bytes at the front that were whole records, done with.
    pub used: usize,
    /// The client sent `close_notify`: nothing after it is read.
    pub closed: bool,
}

/// Why a client's records were refused; the alert to send it, and the error to report.
#[derive(Debug)]
pub struct Refused {
    /// The fatal alert that tells the client why (`None`: its own fatal alert ended it).
    pub alert: Option<AlertDescription>,
    /// What went wrong.
    pub error: Error,
}

impl Refused {
    fn new(alert: AlertDescription, error: impl Into<Error>) -> Self {
        Self {
            alert: Some(alert),
            error: error.into(),
        }
    }
}

impl Records {
    /// Takes over a connection whose handshake is done and whose own records are all sent.
    /// The connection's config must have `enable_secret_extraction` set.
    ///
    /// aws-lc's TLS 1.3 sealing key checks that record numbers only grow, counting from
    /// the first record it seals as number 0. After the handshake rustls has already
    /// sealed some under the current key (its session tickets), so the first record here
    /// is a `KeyUpdate` (appended to `out`, to go before anything else): the key that
    /// follows starts at 0.
    ///
    /// Records the client sent after its `Finished` are not rustls's to handle (it would
    /// answer a `KeyUpdate` by switching keys and holding the answer for a write that
    /// never comes): `tls_stream` gives rustls no record past the one that ends the
    /// handshake, and [`Records::open`] opens the rest after the take-over.
    pub fn take_over(conn: UnbufferedServerConnection, out: &mut Vec<u8>) -> Result<Self, Error> {
        let (secrets, kernel) = conn.dangerous_into_kernel_connection()?;
        let (suite, seal_limit) = match kernel.negotiated_cipher_suite() {
            SupportedCipherSuite::Tls13(s) => (Suite::Tls13(s), s.common.confidentiality_limit),
            SupportedCipherSuite::Tls12(s) => (Suite::Tls12(s), s.common.confidentiality_limit),
        };
        let (seal_seq, tx) = secrets.tx;
        let (open_seq, rx) = secrets.rx;
        let mut records = Self {
            seal: Sealer::new(suite, tx)?,
            seal_seq,
            open: decrypter(suite, rx)?,
            open_seq,
            kernel,
            suite,
            update_due: false,
            seal_limit,
            warnings_left: WARNING_ALERTS,
            key_updates_left: KEY_UPDATES,
        };
        if matches!(suite, Suite::Tls13(_)) && seal_seq != 0 {
            append(out, |dst| records.seal_key_update(dst))?;
        }
        Ok(records)
    }

    /// Lowers the records one key may seal, so that tests reach the limit.
    #[cfg(test)]
    pub fn limit_records_per_key(&mut self, limit: u64) {
        self.seal_limit = limit;
    }

    /// Seals `data` (application data, at most 64 KiB) as records at the start of `dst`,
    /// which must have room for [`SEAL_OVERHEAD`] bytes more; returns their length.
    pub fn seal_data(&mut self, data: &[u8], dst: &mut [u8]) -> Result<usize, Error> {
        let mut n = 0;
        if self.update_due {
            self.update_due = false;
            n += self.seal_key_update(dst)?;
        }
        for chunk in data.chunks(MAX_PLAINTEXT) {
            n += self.seal_record(ContentType::ApplicationData, chunk, &mut dst[n..])?;
        }
        Ok(n)
    }

    /// Seals an alert (`close_notify` is a warning, everything else fatal) onto `out`.
    pub fn seal_alert(&mut self, alert: AlertDescription, out: &mut Vec<u8>) -> Result<(), Error> {
        let level = if alert == AlertDescription::CloseNotify {
            1
        } else {
            2
        };
        append(out, |dst| {
            self.seal_record(ContentType::Alert, &[level, u8::from(alert)], dst)
        })
    }

    /// Seals one record at the start of `dst`, after a `KeyUpdate` if the key has sealed
    /// as many records as is safe; returns the bytes written. TLS 1.2 has no new key to
    /// move to: its connection ends there, as rustls's would, with no more data but the
    /// alert that says so (see [`KEY_SPENT`]).
    fn seal_record(
        &mut self,
        typ: ContentType,
        plain: &[u8],
        dst: &mut [u8],
    ) -> Result<usize, Error> {
        let mut n = 0;
        if self.seal_seq >= self.seal_limit {
            match self.suite {
                Suite::Tls12(_) if typ == ContentType::Alert => {}
                Suite::Tls12(_) => return Err(Error::General(KEY_SPENT.into())),
                Suite::Tls13(_) => n = self.seal_key_update(dst)?,
            }
        }
        Ok(n + self.seal_one(typ, plain, &mut dst[n..])?)
    }

    /// Seals one record under the current key at the start of `dst`; returns its length.
    fn seal_one(&mut self, typ: ContentType, plain: &[u8], dst: &mut [u8]) -> Result<usize, Error> {
        let n = self.seal.seal(typ, plain, self.seal_seq, dst)?;
        self.seal_seq += 1;
        Ok(n)
    }

    /// Seals `KeyUpdate` under the current key at the start of `dst`, then moves to the
    /// next key; returns the bytes written.
    fn seal_key_update(&mut self, dst: &mut [u8]) -> Result<usize, Error> {
        let n = self.seal_one(ContentType::Handshake, &KEY_UPDATE, dst)?;
        let (seq, secrets) = self.kernel.update_tx_secret()?;
        self.seal = Sealer::new(self.suite, secrets)?;
        self.seal_seq = seq;
        Ok(n)
    }

    /// Opens the whole records at the front of `data` in place, handing application data
    /// to `deliver`; stops at a partial record or after `close_notify`.
    pub fn open(
        &mut self,
        data: &mut [u8],
        mut deliver: impl FnMut(&[u8]),
    ) -> Result<Opened, Refused> {
        let mut opened = Opened::default();
        while data.len() - opened.used >= HEADER_LEN {
            let at = opened.used;
            let len = usize::from(u16::from_be_bytes([data[at + 3], data[at + 4]]));
            // TLS 1.3 hides a record's type inside it; TLS 1.2 shows it, and after the
            // handshake a client may send only data and alerts (no renegotiation).
            let typ = ContentType::from(data[at]);
            match (typ, self.suite) {
                (ContentType::ApplicationData, _) | (ContentType::Alert, Suite::Tls12(_)) => {}
                (_, Suite::Tls13(_)) => {
                    return Err(Refused::new(
                        AlertDescription::UnexpectedMessage,
                        PeerMisbehaved::IllegalTlsInnerPlaintext,
                    ))
                }
                (_, Suite::Tls12(_)) => {
                    return Err(Refused::new(
                        AlertDescription::UnexpectedMessage,
                        Error::InappropriateMessage {
                            expect_types: vec![ContentType::ApplicationData, ContentType::Alert],
                            got_type: typ,
                        },
                    ))
                }
            }
            if len > MAX_CIPHERTEXT {
                return Err(Refused::new(
                    AlertDescription::RecordOverflow,
                    Error::PeerSentOversizedRecord,
                ));
            }
            let end = at + HEADER_LEN + len;
            if end > data.len() {
                break;
            }
            let body = &mut data[at + HEADER_LEN..end];
            let message = InboundOpaqueMessage::new(typ, ProtocolVersion::TLSv1_2, body);
            let plain = self.open.decrypt(message, self.open_seq).map_err(|e| {
                let alert = match e {
                    Error::DecryptError => AlertDescription::BadRecordMac,
                    Error::PeerSentOversizedRecord => AlertDescription::RecordOverflow,
                    _ => AlertDescription::UnexpectedMessage,
                };
                Refused::new(alert, e)
            })?;
            self.open_seq = self.open_seq.checked_add(1).ok_or_else(|| {
                Refused::new(AlertDescription::InternalError, Error::DecryptError)
            })?;
            opened.used = end;
            match plain.typ {
                ContentType::ApplicationData => {
                    self.key_updates_left = KEY_UPDATES;
                    deliver(plain.payload);
                }
                ContentType::Alert => {
                    if self.alert(plain.payload)? {
                        opened.closed = true;
                        return Ok(opened);
                    }
                }
                ContentType::Handshake if matches!(self.suite, Suite::Tls13(_)) => {
                    // A KeyUpdate is the only message a client may send now, and its
                    // record holds nothing after it (a key change is on a record boundary).
                    let request = match plain.payload {
                        [24, 0, 0, 1, request @ (0 | 1)] => *request,
                        _ => {
                            return Err(Refused::new(
                                AlertDescription::UnexpectedMessage,
                                Error::InappropriateHandshakeMessage {
                                    expect_types: vec![HandshakeType::KeyUpdate],
                                    got_type: HandshakeType::from(
                                        plain.payload.first().copied().unwrap_or(0),
                                    ),
                                },
                            ))
                        }
                    };
                    self.key_updates_left =
                        self.key_updates_left.checked_sub(1).ok_or_else(|| {
                            Refused::new(
                                AlertDescription::UnexpectedMessage,
                                PeerMisbehaved::TooManyKeyUpdateRequests,
                            )
                        })?;
                    let internal = |e| Refused::new(AlertDescription::InternalError, e);
                    let (seq, secrets) = self.kernel.update_rx_secret().map_err(internal)?;
                    self.open = decrypter(self.suite, secrets).map_err(internal)?;
                    self.open_seq = seq;
                    self.update_due |= request == 1;
                }
                _ => {
                    return Err(Refused::new(
                        AlertDescription::UnexpectedMessage,
                        PeerMisbehaved::IllegalTlsInnerPlaintext,
                    ))
                }
            }
        }
        Ok(opened)
    }

    /// Takes a client's alert as rustls would: `close_notify` ends its stream (`true`), a
    /// fatal alert ends the connection, and a warning is let pass (TLS 1.2 any, TLS 1.3
    /// only `user_canceled`, which a `close_notify` follows), a few times at most.
    fn alert(&mut self, payload: &[u8]) -> Result<bool, Refused> {
        const WARNING: u8 = 1;
        const FATAL: u8 = 2;
        let &[level, code] = payload else {
            return Err(Refused::new(
                AlertDescription::DecodeError,
                PeerMisbehaved::IllegalTlsInnerPlaintext,
            ));
        };
        let description = AlertDescription::from(code);
        match level {
            WARNING | FATAL if description == AlertDescription::CloseNotify => Ok(true),
            WARNING => {
                self.warnings_left = self.warnings_left.checked_sub(1).ok_or_else(|| {
                    Refused::new(
                        AlertDescription::UnexpectedMessage,
                        PeerMisbehaved::TooManyWarningAlertsReceived,
                    )
                })?;
                if matches!(self.suite, Suite::Tls13(_))
                    && description != AlertDescription::UserCanceled
                {
                    return Err(Refused::new(
                        AlertDescription::DecodeError,
                        Error::AlertReceived(description),
                    ));
                }
                Ok(false)
            }
            FATAL => Err(Refused {
                alert: None,
                error: Error::AlertReceived(description),
            }),
            _ => Err(Refused::new(
                AlertDescription::IllegalParameter,
                Error::AlertReceived(description),
            )),
        }
    }
}

/// Appends the small records `seal` writes (the gateway's alerts and key updates) to `out`.
fn append(
    out: &mut Vec<u8>,
    seal: impl FnOnce(&mut [u8]) -> Result<usize, Error>,
) -> Result<(), Error> {
    let mut records = [0u8; SMALL_RECORDS];
    let n = seal(&mut records)?;
    out.extend_from_slice(&records[..n]);
    Ok(())
}

/// One sending key: aws-lc's AEAD, used directly so that no record costs a copy into an
/// allocation of its own (rustls's record ciphers seal into a fresh buffer per record).
struct Sealer {
    key: SealingKey,
    iv: Iv,
    /// TLS 1.2's record rules: the type in the header and in the additional data, no
    /// inner type.
    tls12: bool,
    /// Bytes of the nonce each record carries before its ciphertext: 8 for TLS 1.2's
    /// AES-GCM (RFC 5288 §3), none otherwise.
    explicit_nonce: usize,
}

enum SealingKey {
    /// TLS 1.3's AES-GCM: aws-lc's TLS 1.3 record key, which seals from the plaintext
    /// straight into the output (and checks that record numbers only grow).
    Tls13Gcm(aead::TlsRecordSealingKey),
    /// Everything else, which the plaintext is copied into the output for and sealed
    /// there: ChaCha20-Poly1305 (aws-lc has no TLS record key for it) and TLS 1.2's
    /// AES-GCM (aws-lc's record key would count from the first record it seals, and a
    /// TLS 1.2 key has sealed rustls's `Finished` before the take-over, with no new key
    /// to move to).
    InPlace(aead::LessSafeKey),
}

impl Sealer {
    fn new(suite: Suite, secrets: ConnectionTrafficSecrets) -> Result<Self, Error> {
        let (algorithm, key, iv) = key_and_iv(secrets)?;
        let tls12 = matches!(suite, Suite::Tls12(_));
        let gcm = *algorithm != aead::CHACHA20_POLY1305;
        let refused = |_| Error::General("record sealing key refused".into());
        let key = if gcm && !tls12 {
            SealingKey::Tls13Gcm(
                aead::TlsRecordSealingKey::new(algorithm, aead::TlsProtocolId::TLS13, key.as_ref())
                    .map_err(refused)?,
            )
        } else {
            SealingKey::InPlace(aead::LessSafeKey::new(
                aead::UnboundKey::new(algorithm, key.as_ref()).map_err(refused)?,
            ))
        };
        Ok(Self {
            key,
            iv,
            tls12,
            explicit_nonce: if gcm && tls12 { 8 } else { 0 },
        })
    }

    /// Seals `plain` as record number `seq` of type `typ` at the start of `dst`; returns
    /// the record's length.
    fn seal(
        &mut self,
        typ: ContentType,
        plain: &[u8],
        seq: u64,
        dst: &mut [u8],
    ) -> Result<usize, Error> {
        let tag_len = match &self.key {
            SealingKey::Tls13Gcm(key) => key.algorithm().tag_len(),
            SealingKey::InPlace(key) => key.algorithm().tag_len(),
        };
        // TLS 1.3 seals the real type inside the record, behind the data.
        let inner_type = [u8::from(typ)];
        let inner_type = if self.tls12 { &[][..] } else { &inner_type[..] };
        let body = self.explicit_nonce + plain.len() + inner_type.len() + tag_len;
        let [hi, lo] = u16::try_from(body)
            .map_err(|_| Error::EncryptError)?
            .to_be_bytes();
        let outer_type = if self.tls12 {
            typ
        } else {
            ContentType::ApplicationData
        };
        let header = [u8::from(outer_type), 3, 3, hi, lo];
        // What the tag covers besides the ciphertext: TLS 1.3 the header (RFC 8446 §5.2),
        // TLS 1.2 the record's number, type, version and plaintext length (RFC 5246
        // §6.2.3.3).
        let mut aad = [0u8; 13];
        let aad = if self.tls12 {
            let [len_hi, len_lo] = u16::try_from(plain.len())
                .map_err(|_| Error::EncryptError)?
                .to_be_bytes();
            aad[..8].copy_from_slice(&seq.to_be_bytes());
            aad[8..].copy_from_slice(&[u8::from(typ), 3, 3, len_hi, len_lo]);
            &aad[..]
        } else {
            aad[..HEADER_LEN].copy_from_slice(&header);
            &aad[..HEADER_LEN]
        };
        let record = dst
            .get_mut(..HEADER_LEN + body)
            .ok_or_else(|| Error::General("no room for a sealed record".into()))?;
        let (head, rest) = record.split_at_mut(HEADER_LEN);
        head.copy_from_slice(&header);
        let nonce = Nonce::new(&self.iv, seq).0;
        let (explicit_nonce, rest) = rest.split_at_mut(self.explicit_nonce);
        explicit_nonce.copy_from_slice(&nonce[nonce.len() - self.explicit_nonce..]);
        let (ciphertext, type_and_tag) = rest.split_at_mut(plain.len());
        let nonce = aead::Nonce::assume_unique_for_key(nonce);
        match &mut self.key {
            SealingKey::Tls13Gcm(key) => key.seal_out_of_place_scatter(
                nonce,
                aead::Aad::from(aad),
                plain,
                ciphertext,
                inner_type,
                type_and_tag,
            ),
            SealingKey::InPlace(key) => {
                ciphertext.copy_from_slice(plain);
                key.seal_in_place_scatter(
                    nonce,
                    aead::Aad::from(aad),
                    ciphertext,
                    inner_type,
                    type_and_tag,
                )
            }
        }
        .map_err(|_| Error::EncryptError)?;
        Ok(HEADER_LEN + body)
    }
}

fn decrypter(
    suite: Suite,
    secrets: ConnectionTrafficSecrets,
) -> Result<Box<dyn MessageDecrypter>, Error> {
    let (algorithm, key, iv) = key_and_iv(secrets)?;
    Ok(match suite {
        Suite::Tls13(suite) => suite.aead_alg.decrypter(key, iv),
        // TLS 1.2's AES-GCM is given the implicit part of the nonce only; each record
        // carries the rest (RFC 5288 §3).
        Suite::Tls12(suite) => {
            let gcm = *algorithm != aead::CHACHA20_POLY1305;
            let iv = if gcm { &iv.as_ref()[..4] } else { iv.as_ref() };
            suite.aead_alg.decrypter(key, iv)
        }
    })
}

/// The AEAD (aws-lc's) a traffic secret is for, its key and its IV.
fn key_and_iv(
    secrets: ConnectionTrafficSecrets,
) -> Result<(&'static aead::Algorithm, AeadKey, Iv), Error> {
    match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => Ok((&aead::AES_128_GCM, key, iv)),
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => Ok((&aead::AES_256_GCM, key, iv)),
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            Ok((&aead::CHACHA20_POLY1305, key, iv))
        }
        // The enum is non-exhaustive: an AEAD a later rustls adds.
        _ => Err(Error::General("traffic secrets of an unknown AEAD".into())),
    }
}

/// A client's record layer on its extracted secrets, for tests that send records
/// rustls's client would not (warning alerts, floods of them) and read the answer.
#[cfg(test)]
pub struct ClientRecords {
    seal: Sealer,
    seal_seq: u64,
    open: Box<dyn MessageDecrypter>,
    open_seq: u64,
}

#[cfg(test)]
impl ClientRecords {
    /// The client's records on `suite`; TLS 1.3 suites other than AES-GCM only (aws-lc's
    /// TLS 1.3 AES-GCM key counts from the first record it seals).
    pub fn new(
        suite: SupportedCipherSuite,
        secrets: rustls::ExtractedSecrets,
    ) -> Result<Self, Error> {
        let suite = match suite {
            SupportedCipherSuite::Tls13(s) => Suite::Tls13(s),
            SupportedCipherSuite::Tls12(s) => Suite::Tls12(s),
        };
        let (seal_seq, tx) = secrets.tx;
        let (open_seq, rx) = secrets.rx;
        Ok(Self {
            seal: Sealer::new(suite, tx)?,
            seal_seq,
            open: decrypter(suite, rx)?,
            open_seq,
        })
    }

    /// One record of type `typ` holding `plain`.
    pub fn seal(&mut self, typ: ContentType, plain: &[u8]) -> Result<Vec<u8>, Error> {
        let mut out = vec![0u8; plain.len() + 64];
        let n = self.seal.seal(typ, plain, self.seal_seq, &mut out)?;
        self.seal_seq += 1;
        out.truncate(n);
        Ok(out)
    }

    /// Opens the whole record `record`: its type and plaintext.
    pub fn open(&mut self, record: &mut [u8]) -> Result<(ContentType, Vec<u8>), Error> {
        let typ = ContentType::from(record[0]);
        let body = &mut record[HEADER_LEN..];
        let message = InboundOpaqueMessage::new(typ, ProtocolVersion::TLSv1_2, body);
        let plain = self.open.decrypt(message, self.open_seq)?;
        self.open_seq += 1;
        Ok((plain.typ, plain.payload.to_vec()))
    }
}
