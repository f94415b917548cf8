#!/usr/bin/env python3
"""Drive chromecard-vkey with Yubico's python-fido2 (1.x), an independent client.

    python_fido2.py MODE HIDRAW

MODE:
  ctap2   against a key started with --touch-after-ms 500: discovery, CTAPHID (PING
          across many packets, WINK, two channels), CTAP2 getInfo, makeCredential with
          its packed self-attestation verified, getAssertion verified with the credential's
          COSE key, the refusals, and a whole WebAuthn ceremony (Fido2Client + Fido2Server).
  cancel  against a key started with --no-touch: a request cancelled through
          threading.Event ends with CTAP2_ERR_KEEPALIVE_CANCEL, keep-alives say UPNEEDED
          meanwhile, and the key answers again afterwards.
  pin     against a key with no PIN yet: python-fido2's ClientPin with PIN/UV auth
          protocols 2 and 1: setPIN, getPINRetries, tokens with permissions (and the
          legacy getPinToken), makeCredential and getAssertion with pinUvAuthParam (UV
          set, signature verified), a wrong PIN (PIN_INVALID, one retry less, all back
          after the right one), a token for another relying party (PIN_AUTH_INVALID),
          changePIN.

Prints one "PASS name" or "FAIL name: why" line per check and a closing
summary line; exits 1 when a check failed, 2 on a usage error.
Started by e2e/tests/vkey_interop.rs (inside the VM of scripts/vm-run.sh).
"""

import hashlib
import os
import sys
import threading
import time
import traceback

import fido2
from fido2.attestation import AttestationType, InvalidSignature, PackedAttestation
from fido2.client import Fido2Client
from fido2.cose import ES256
from fido2.ctap import STATUS, CtapError
from fido2.ctap2 import Ctap2
from fido2.ctap2.pin import ClientPin, PinProtocolV1, PinProtocolV2
from fido2.hid import CAPABILITY, CtapHidDevice, open_device
from fido2.server import Fido2Server
from fido2.webauthn import (
    AttestationObject,
    AuthenticatorData,
    PublicKeyCredentialRpEntity,
    PublicKeyCredentialUserEntity,
)

RP_ID = "example.com"
RP = {"id": RP_ID, "name": "Example"}
USER = {"id": b"user-0001", "name": "alice", "displayName": "Alice"}
ES256_PARAMS = [{"type": "public-key", "alg": ES256.ALGORITHM}]

passed = 0
failed = 0


class Failure(Exception):
    pass


def check(cond, why):
    if not cond:
        raise Failure(why)


def run(name, fn, *args):
    """Run one check; returns its result, or None when it failed."""
    global passed, failed
    try:
        result = fn(*args)
    except Failure as e:
        failed += 1
        print(f"FAIL {name}: {e}", flush=True)
        return None
    except Exception as e:  # noqa: BLE001 - any surprise is a failure of the check
        failed += 1
        print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
        traceback.print_exc(file=sys.stdout)
        return None
    passed += 1
    print(f"PASS {name}", flush=True)
    return result if result is not None else True


def expect_ctap_error(code, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except CtapError as e:
        check(e.code == code, f"expected CtapError {code.name}, got {e.code!r}")
        return
    raise Failure(f"expected CtapError {code.name}, the call succeeded")


def sha256(data):
    return hashlib.sha256(data).digest()


# ---------------------------------------------------------------------------
# ctap2 mode
# ---------------------------------------------------------------------------


def find_device(path):
    devices = list(CtapHidDevice.list_devices())
    paths = [d.descriptor.path for d in devices]
    matching = [d for d in devices if d.descriptor.path == path]
    check(matching, f"list_devices() found {paths}, not {path}")
    dev = matching[0]
    d = dev.descriptor
    check(
        (d.vid, d.pid) == (0x1209, 0xCC01), f"vid/pid {d.vid:#06x}/{d.pid:#06x}"
    )
    check(
        (d.report_size_in, d.report_size_out) == (64, 64),
        f"report sizes {d.report_size_in}/{d.report_size_out}",
    )
    check(
        d.product_name == "chromecard virtual FIDO2 key",
        f"product name {d.product_name!r}",
    )
    check(dev.version == 2, f"CTAPHID protocol version {dev.version}")
    caps = dev.capabilities
    check(caps & CAPABILITY.CBOR, f"capabilities {caps:#x} lack CBOR")
    check(caps & CAPABILITY.WINK, f"capabilities {caps:#x} lack WINK")
    check(caps & CAPABILITY.NMSG, f"capabilities {caps:#x} lack NMSG (no CTAP1)")
    for other in devices:
        if other is not dev:
            other.close()
    return dev


def ping(dev, size):
    msg = os.urandom(size)
    echo = dev.ping(msg)
    check(echo == msg, f"{size}-byte PING came back as {len(echo)} other bytes")


def channels_per_client(path):
    # Each client that opens the key gets its own channel (CTAPHID_INIT on the broadcast
    # channel). One at a time: hidraw hands every report to every open file, and
    # python-fido2 fails on a report for another channel.
    seen = []
    for _ in range(2):
        dev = open_device(path)
        try:
            msg = os.urandom(100)
            check(dev.ping(msg) == msg, f"PING on channel {dev._channel_id:#x}")
            seen.append(dev._channel_id)
        finally:
            dev.close()
    check(seen[0] != seen[1], f"both clients got channel {seen[0]:#x}")


def get_info(ctap2):
    info = ctap2.get_info()
    check("FIDO_2_0" in info.versions, f"versions {info.versions}")
    check("FIDO_2_1" in info.versions, f"versions {info.versions}")
    check(len(info.aaguid) == 16, f"aaguid {info.aaguid!r}")
    check(info.options.get("up") is True, f"options {info.options}")
    check(info.options.get("rk") is False, f"options {info.options}")
    # A PIN can be set, and none is (CTAP 2.1 keys report clientPin: false then).
    check(info.options.get("clientPin") is False, f"options {info.options}")
    check(info.options.get("pinUvAuthToken") is True, f"options {info.options}")
    check(info.pin_uv_protocols == [2, 1], f"pinUvAuthProtocols {info.pin_uv_protocols}")
    check(info.transports == ["usb"], f"transports {info.transports}")
    check(
        info.algorithms == [{"alg": -7, "type": "public-key"}],
        f"algorithms {info.algorithms}",
    )
    check(info.max_msg_size >= 1024, f"maxMsgSize {info.max_msg_size}")
    return info


def make_credential(ctap2, info):
    cdh = sha256(b"python-fido2 makeCredential " + os.urandom(16))
    statuses = []
    att = ctap2.make_credential(
        cdh, RP, USER, ES256_PARAMS, on_keepalive=statuses.append
    )
    check(att.fmt == "packed", f"fmt {att.fmt!r}")
    check(att.att_stmt.get("alg") == -7, f"attStmt {att.att_stmt}")
    check("x5c" not in att.att_stmt, "a self-attestation has no x5c")
    ad = att.auth_data
    check(ad.rp_id_hash == sha256(RP_ID.encode()), "rpIdHash")
    check(ad.is_user_present(), f"flags {ad.flags:#x}: UP clear")
    check(ad.is_attested(), f"flags {ad.flags:#x}: AT clear")
    check(not ad.is_user_verified(), f"flags {ad.flags:#x}: UV set without UV")
    cred = ad.credential_data
    check(cred is not None, "no attested credential data")
    check(cred.aaguid == info.aaguid, "attested AAGUID differs from getInfo's")
    check(isinstance(cred.public_key, ES256), f"key {type(cred.public_key).__name__}")
    check(len(cred.credential_id) > 0, "empty credential id")
    check(STATUS.UPNEEDED in statuses, f"keep-alives seen: {statuses}")

    # The attestation, verified by python-fido2's own verifier for "packed".
    result = PackedAttestation().verify(att.att_stmt, ad, cdh)
    check(result.attestation_type == AttestationType.SELF, f"{result}")
    check(result.trust_path == [], f"trust path {result.trust_path}")
    # ... which does notice another clientDataHash.
    try:
        PackedAttestation().verify(att.att_stmt, ad, sha256(b"another"))
    except InvalidSignature:
        pass
    else:
        raise Failure("the attestation verified over another clientDataHash")
    # The same through a WebAuthn attestation object (CBOR round trip).
    obj = AttestationObject.create(att.fmt, ad, att.att_stmt)
    again = AttestationObject(bytes(obj))
    PackedAttestation().verify(again.att_stmt, again.auth_data, cdh)
    return cred, ad.counter


def get_assertion(ctap2, cred, last_counter):
    pub = cred.public_key
    allow = [{"type": "public-key", "id": cred.credential_id}]
    counter = last_counter
    for i in range(2):
        cdh = sha256(b"python-fido2 getAssertion %d " % i + os.urandom(16))
        statuses = []
        a = ctap2.get_assertion(RP_ID, cdh, allow, on_keepalive=statuses.append)
        check(
            a.credential == {"type": "public-key", "id": cred.credential_id},
            f"credential {a.credential}",
        )
        ad = a.auth_data
        check(isinstance(ad, AuthenticatorData), "authData")
        check(ad.rp_id_hash == sha256(RP_ID.encode()), "rpIdHash")
        check(ad.is_user_present(), f"flags {ad.flags:#x}: UP clear")
        check(not ad.is_attested(), f"flags {ad.flags:#x}: AT set in an assertion")
        check(ad.counter > counter, f"counter {ad.counter} after {counter}")
        counter = ad.counter
        check(STATUS.UPNEEDED in statuses, f"keep-alives seen: {statuses}")
        a.verify(cdh, pub)
        try:
            a.verify(sha256(b"another"), pub)
        except Exception:  # cryptography's InvalidSignature
            pass
        else:
            raise Failure("the assertion verified over another clientDataHash")


def refusals(ctap2, cred):
    cdh = sha256(b"refusals")
    unknown = [{"type": "public-key", "id": os.urandom(len(cred.credential_id))}]
    expect_ctap_error(
        CtapError.ERR.NO_CREDENTIALS, ctap2.get_assertion, RP_ID, cdh, unknown
    )
    mine = [{"type": "public-key", "id": cred.credential_id}]
    expect_ctap_error(
        CtapError.ERR.NO_CREDENTIALS, ctap2.get_assertion, "other.example", cdh, mine
    )
    expect_ctap_error(
        CtapError.ERR.CREDENTIAL_EXCLUDED,
        ctap2.make_credential,
        cdh,
        RP,
        USER,
        ES256_PARAMS,
        exclude_list=mine,
    )
    expect_ctap_error(
        CtapError.ERR.UNSUPPORTED_ALGORITHM,
        ctap2.make_credential,
        cdh,
        RP,
        USER,
        [{"type": "public-key", "alg": -257}],
    )


def webauthn_ceremony(dev):
    """A whole registration and authentication: python-fido2's client builds the
    clientData and talks CTAP2, its relying-party server verifies the results."""
    origin = "https://" + RP_ID
    client = Fido2Client(dev, origin)
    server = Fido2Server(PublicKeyCredentialRpEntity(name="Example", id=RP_ID))
    user = PublicKeyCredentialUserEntity(name="bob", id=b"user-0002")
    options, state = server.register_begin(user, user_verification="discouraged")
    made = client.make_credential(options["publicKey"])
    auth_data = server.register_complete(
        state, made.client_data, made.attestation_object
    )
    cred = auth_data.credential_data
    check(cred is not None, "registration without a credential")
    options, state = server.authenticate_begin([cred], user_verification="discouraged")
    got = client.get_assertion(options["publicKey"]).get_response(0)
    check(got.credential_id == cred.credential_id, "another credential answered")
    matched = server.authenticate_complete(
        state,
        [cred],
        got.credential_id,
        got.client_data,
        got.authenticator_data,
        got.signature,
    )
    check(matched.credential_id == cred.credential_id, "server matched another one")


def mode_ctap2(path):
    run("a channel per client", channels_per_client, path)
    dev = run("list_devices finds the key", find_device, path)
    if dev is None:
        return
    run("CTAPHID_PING 0 bytes", ping, dev, 0)
    run("CTAPHID_PING 57 bytes (one full init packet)", ping, dev, 57)
    run("CTAPHID_PING 58 bytes (init + 1 continuation)", ping, dev, 58)
    # 1000 bytes: 17 packets each way. Not the 7609-byte maximum (129 packets): the
    # kernel's uhid queue holds 32 output reports, and a client writing faster than the
    # key's process reads (as in an emulated VM) gets the rest dropped ("Output queue is
    # full"); a USB key would NAK instead. CTAP2 messages here are a few packets long.
    run("CTAPHID_PING 1000 bytes (17 packets)", ping, dev, 1000)
    run("CTAPHID_WINK", dev.wink)
    ctap2 = run("Ctap2(dev) (strict canonical CBOR)", Ctap2, dev)
    if ctap2 is None:
        return
    info = run("authenticatorGetInfo", get_info, ctap2)
    if info is None:
        return
    made = run(
        "authenticatorMakeCredential + packed self-attestation verified",
        make_credential,
        ctap2,
        info,
    )
    if made is not None:
        cred, counter = made
        run(
            "authenticatorGetAssertion verified with the attested COSE key",
            get_assertion,
            ctap2,
            cred,
            counter,
        )
        run("refusals (NO_CREDENTIALS, CREDENTIAL_EXCLUDED, UNSUPPORTED_ALGORITHM)",
            refusals, ctap2, cred)
    run("WebAuthn ceremony: Fido2Client + Fido2Server", webauthn_ceremony, dev)


# ---------------------------------------------------------------------------
# cancel mode
# ---------------------------------------------------------------------------


def cancelled(what, call):
    event = threading.Event()
    timer = threading.Timer(0.3, event.set)
    statuses = []
    start = time.monotonic()
    timer.start()
    try:
        call(event, statuses.append)
    except CtapError as e:
        took = time.monotonic() - start
        check(
            e.code == CtapError.ERR.KEEPALIVE_CANCEL,
            f"{what} ended with {e.code!r}, not KEEPALIVE_CANCEL",
        )
        check(took < 10, f"{what} took {took:.1f} s to end after the cancel")
    else:
        raise Failure(f"{what} succeeded although nobody touched the key")
    finally:
        timer.cancel()
    check(STATUS.UPNEEDED in statuses, f"keep-alives seen: {statuses}")


def mode_cancel(path):
    dev = run("open_device", open_device, path)
    if dev is None:
        return
    ctap2 = run("Ctap2(dev)", Ctap2, dev)
    if ctap2 is None:
        return
    cdh = sha256(b"cancel")
    run(
        "makeCredential cancelled by event: KEEPALIVE_CANCEL after UPNEEDED",
        cancelled,
        "makeCredential",
        lambda event, ka: ctap2.make_credential(
            cdh, RP, USER, ES256_PARAMS, event=event, on_keepalive=ka
        ),
    )
    run("the key answers after a cancel", ping, dev, 200)
    run(
        "authenticatorSelection cancelled by event: KEEPALIVE_CANCEL",
        cancelled,
        "selection",
        lambda event, ka: ctap2.selection(event=event, on_keepalive=ka),
    )
    run("authenticatorGetInfo after the cancels", get_info, ctap2)


# ---------------------------------------------------------------------------
# pin mode
# ---------------------------------------------------------------------------

PIN = "1234"
NEW_PIN = "12345678"


def pin_is_set(ctap2, wanted):
    options = ctap2.get_info().options
    check(options.get("clientPin") is wanted, f"options {options}")


def set_pin(ctap2):
    pin_is_set(ctap2, False)
    ClientPin(ctap2, PinProtocolV2()).set_pin(PIN)
    pin_is_set(ctap2, True)
    retries, _ = ClientPin(ctap2).get_pin_retries()
    check(retries == 8, f"{retries} retries after setPIN")
    # A second setPIN is refused: changePIN is the way.
    expect_ctap_error(
        CtapError.ERR.PIN_AUTH_INVALID, ClientPin(ctap2, PinProtocolV1()).set_pin, "5678"
    )


def uv_ceremony(ctap2, protocol, pin, legacy):
    """makeCredential and getAssertion, each with a pinUvAuthParam from a token."""
    cp = ClientPin(ctap2, protocol)
    P = ClientPin.PERMISSION
    # A key holds one pinUvAuthToken: each new one replaces the last.
    if legacy:
        # getPinToken (CTAP 2.0's): python-fido2 uses it when no permissions are given.
        mc_token = cp.get_pin_token(pin)
    else:
        mc_token = cp.get_pin_token(pin, P.MAKE_CREDENTIAL, RP_ID)
    cdh = sha256(b"pin makeCredential " + os.urandom(8))
    att = ctap2.make_credential(
        cdh,
        RP,
        USER,
        ES256_PARAMS,
        pin_uv_param=cp.protocol.authenticate(mc_token, cdh),
        pin_uv_protocol=cp.protocol.VERSION,
    )
    check(att.auth_data.is_user_verified(), f"makeCredential flags {att.auth_data.flags:#x}")
    cred = att.auth_data.credential_data
    allow = [{"type": "public-key", "id": cred.credential_id}]
    # An mc token is no ga token; and on a CTAP 2.1 key even getPinToken's token (mc and
    # ga) is spent by the touched makeCredential (clearPinUvAuthTokenPermissionsExceptLbw).
    cdh = sha256(b"mc token for ga")
    expect_ctap_error(
        CtapError.ERR.PIN_AUTH_INVALID,
        ctap2.get_assertion,
        RP_ID,
        cdh,
        allow,
        pin_uv_param=cp.protocol.authenticate(mc_token, cdh),
        pin_uv_protocol=cp.protocol.VERSION,
    )
    ga_token = cp.get_pin_token(pin) if legacy else cp.get_pin_token(pin, P.GET_ASSERTION, RP_ID)
    cdh = sha256(b"pin getAssertion " + os.urandom(8))
    a = ctap2.get_assertion(
        RP_ID,
        cdh,
        allow,
        pin_uv_param=cp.protocol.authenticate(ga_token, cdh),
        pin_uv_protocol=cp.protocol.VERSION,
    )
    check(a.auth_data.is_user_verified(), f"getAssertion flags {a.auth_data.flags:#x}: UV clear")
    check(a.auth_data.is_user_present(), f"getAssertion flags {a.auth_data.flags:#x}: UP clear")
    a.verify(cdh, cred.public_key)
    # The same token over another clientDataHash, or from the other protocol: refused.
    expect_ctap_error(
        CtapError.ERR.PIN_AUTH_INVALID,
        ctap2.get_assertion,
        RP_ID,
        sha256(b"other"),
        allow,
        pin_uv_param=cp.protocol.authenticate(ga_token, cdh),
        pin_uv_protocol=cp.protocol.VERSION,
    )
    # Without a pinUvAuthParam: signed, UV clear.
    cdh = sha256(b"no uv")
    a = ctap2.get_assertion(RP_ID, cdh, allow)
    check(not a.auth_data.is_user_verified(), "UV set without a pinUvAuthParam")
    return cred


def token_bound_to_its_rp(ctap2, cred):
    cp = ClientPin(ctap2, PinProtocolV2())
    token = cp.get_pin_token(PIN, ClientPin.PERMISSION.GET_ASSERTION, "other.example")
    cdh = sha256(b"bound")
    expect_ctap_error(
        CtapError.ERR.PIN_AUTH_INVALID,
        ctap2.get_assertion,
        RP_ID,
        cdh,
        [{"type": "public-key", "id": cred.credential_id}],
        pin_uv_param=cp.protocol.authenticate(token, cdh),
        pin_uv_protocol=2,
    )


def wrong_pin(ctap2, protocol):
    cp = ClientPin(ctap2, protocol)
    expect_ctap_error(
        CtapError.ERR.PIN_INVALID,
        cp.get_pin_token,
        "0000",
        ClientPin.PERMISSION.GET_ASSERTION,
        RP_ID,
    )
    retries, _ = cp.get_pin_retries()
    check(retries == 7, f"{retries} retries after a wrong PIN")
    cp.get_pin_token(PIN, ClientPin.PERMISSION.GET_ASSERTION, RP_ID)
    retries, _ = cp.get_pin_retries()
    check(retries == 8, f"{retries} retries after the right PIN")


def change_pin(ctap2):
    cp = ClientPin(ctap2, PinProtocolV1())
    cp.change_pin(PIN, NEW_PIN)
    expect_ctap_error(
        CtapError.ERR.PIN_INVALID, cp.get_pin_token, PIN, ClientPin.PERMISSION.GET_ASSERTION, RP_ID
    )
    cp.get_pin_token(NEW_PIN, ClientPin.PERMISSION.GET_ASSERTION, RP_ID)


def mode_pin(path):
    dev = run("list_devices finds the key", find_device, path)
    if dev is None:
        return
    ctap2 = run("Ctap2(dev) (strict canonical CBOR)", Ctap2, dev)
    if ctap2 is None:
        return
    if run("setPIN (protocol 2), getPINRetries", set_pin, ctap2) is None:
        return
    cred = run(
        "protocol 2: token with permissions, makeCredential and getAssertion with UV",
        uv_ceremony, ctap2, PinProtocolV2(), PIN, False,
    )
    run(
        "protocol 1: token with permissions, makeCredential and getAssertion with UV",
        uv_ceremony, ctap2, PinProtocolV1(), PIN, False,
    )
    run(
        "protocol 1: getPinToken (legacy), makeCredential and getAssertion with UV, the token spent by the first",
        uv_ceremony, ctap2, PinProtocolV1(), PIN, True,
    )
    if cred is not None:
        run("a token bound to another rpId is refused", token_bound_to_its_rp, ctap2, cred)
    run("protocol 2: a wrong PIN costs one retry, the right one restores them",
        wrong_pin, ctap2, PinProtocolV2())
    run("protocol 1: a wrong PIN costs one retry, the right one restores them",
        wrong_pin, ctap2, PinProtocolV1())
    run("changePIN (protocol 1)", change_pin, ctap2)


def main(argv):
    if len(argv) != 3 or argv[1] not in ("ctap2", "cancel", "pin"):
        print(__doc__, file=sys.stderr)
        return 2
    print(f"python-fido2 {fido2.__version__} on Python {sys.version.split()[0]}")
    {"ctap2": mode_ctap2, "cancel": mode_cancel, "pin": mode_pin}[argv[1]](argv[2])
    print(f"python-fido2 summary: {passed} checks passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
