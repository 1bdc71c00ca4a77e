/**
 * The ephemeral TLS certificate of one end of the RPC tunnel: a fresh Ed25519 key, self-signed,
 * made when a tunnel server or proxy starts and never written to disk. TLS 1.3 does not take
 * secp256k1 certificates, so the certificate means nothing by itself: each end ties it to its node
 * key with a signature over the certificate's fingerprint (tunnel.ts). The DER is built with a
 * maintained ASN.1 library and signed with node:crypto.
 */
import { createHash, generateKeyPairSync, randomBytes, sign, type X509Certificate } from "node:crypto";
import { AsnConvert } from "@peculiar/asn1-schema";
import {
  AlgorithmIdentifier,
  AttributeTypeAndValue,
  AttributeValue,
  Certificate,
  Name,
  RelativeDistinguishedName,
  SubjectPublicKeyInfo,
  TBSCertificate,
  Validity,
  Version,
} from "@peculiar/asn1-x509";

const ED25519 = "1.3.101.112";
const COMMON_NAME = "2.5.4.3";

export interface TunnelCert {
  key: string;
  cert: string;
  /** sha256 of the certificate's DER, hex */
  fingerprint: string;
}

/** A new self-signed Ed25519 certificate, valid from a minute ago for `days`. */
export function ephemeralCert(days = 2): TunnelCert {
  const { publicKey, privateKey } = generateKeyPairSync("ed25519");
  const algorithm = new AlgorithmIdentifier({ algorithm: ED25519 });
  const name = new Name([
    new RelativeDistinguishedName([
      new AttributeTypeAndValue({ type: COMMON_NAME, value: new AttributeValue({ utf8String: "sharedllm-tunnel" }) }),
    ]),
  ]);
  // a positive serial in minimal DER: a first byte of 1..127 (a leading 0x00 before a byte under
  // 0x80 is padding OpenSSL refuses: about one certificate in 256 failed to load)
  const serial = randomBytes(16);
  serial[0] = 1 + ((serial[0] as number) % 127);
  const now = Date.now();
  const tbs = new TBSCertificate({
    version: Version.v3,
    serialNumber: new Uint8Array(serial).buffer,
    signature: algorithm,
    issuer: name,
    validity: new Validity({ notBefore: new Date(now - 60_000), notAfter: new Date(now + days * 86_400_000) }),
    subject: name,
    subjectPublicKeyInfo: AsnConvert.parse(publicKey.export({ type: "spki", format: "der" }), SubjectPublicKeyInfo),
  });
  const signature = sign(null, Buffer.from(AsnConvert.serialize(tbs)), privateKey);
  const der = Buffer.from(
    AsnConvert.serialize(
      new Certificate({ tbsCertificate: tbs, signatureAlgorithm: algorithm, signatureValue: new Uint8Array(signature).buffer }),
    ),
  );
  const base64 = der.toString("base64").replace(/.{64}/g, "$&\n");
  return {
    key: privateKey.export({ type: "pkcs8", format: "pem" }) as string,
    cert: `-----BEGIN CERTIFICATE-----\n${base64}${base64.endsWith("\n") ? "" : "\n"}-----END CERTIFICATE-----\n`,
    fingerprint: createHash("sha256").update(der).digest("hex"),
  };
}

/** sha256 of a peer certificate's DER, hex. */
export function certFingerprint(cert: X509Certificate | { raw: Buffer }): string {
  return createHash("sha256").update(cert.raw).digest("hex");
}
