"""What the lab directory contains: slapd's cn=config and the example tree, rendered as LDIF. Pure.

The example tree (suffix ``dc=virtplane,dc=lab``)::

    ou=people     alice (admin), bob (operator), carol (viewer), dave (in sre, nested),
                  mallory (admin, permanently locked by ppolicy), erin (locked after 3 wrong passwords),
                  jdoe and j*doe (two users whose logins differ only by a '*': unescaped filters confuse them)
    ou=groups     virtplane-admins      alice, mallory
                  virtplane-operators   bob, cn=sre                    (a group of groups)
                  virtplane-viewers     carol, cn=virtplane-operators  (nesting two deep)
                  sre                   dave
    ou=services   cn=virtplane          the service account virtplane binds as to search
    ou=policies   cn=default            ppolicy: pwdLockout, no failure counting (administrative locks only)
                  cn=lockout            ppolicy: locked for 300 s after 3 failures (erin's policy)
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SUFFIX = "dc=virtplane,dc=lab"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
SERVICES = f"ou=services,{SUFFIX}"
POLICIES = f"ou=policies,{SUFFIX}"
SERVICE_DN = f"cn=virtplane,{SERVICES}"
ROOT_PEERCRED = "gidNumber=0+uidNumber=0,cn=peercred,cn=external,cn=auth"
PERMANENT_LOCK = "000001010000Z"  # ppolicy: locked until an administrator removes pwdAccountLockedTime
SLAPD_MODULE_DIR = "/usr/lib/ldap"
SCHEMA_DIR = "/etc/ldap/schema"


@dataclass(frozen=True)
class ExampleUser:
    uid: str
    cn: str
    locked: bool = False
    policy: str | None = None  # cn of a policy under ou=policies; None = the default policy


EXAMPLE_USERS: tuple[ExampleUser, ...] = (
    ExampleUser("alice", "Alice Admin"),
    ExampleUser("bob", "Bob Operator"),
    ExampleUser("carol", "Carol Viewer"),
    ExampleUser("dave", "Dave SRE"),
    ExampleUser("mallory", "Mallory Locked", locked=True),
    ExampleUser("erin", "Erin Lockout", policy="lockout"),
    ExampleUser("jdoe", "John Doe"),
    ExampleUser("j*doe", "Jane Star Doe"),
)

# group cn -> (user uids, group cns) that are its direct members
EXAMPLE_GROUPS: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "virtplane-admins": (("alice", "mallory"), ()),
    "virtplane-operators": (("bob",), ("sre",)),
    "virtplane-viewers": (("carol",), ("virtplane-operators",)),
    "sre": (("dave",), ()),
}


def user_dn(uid: str) -> str:
    return f"uid={_dn_value(uid)},{PEOPLE}"


def group_dn(cn: str) -> str:
    return f"cn={_dn_value(cn)},{GROUPS}"


def _dn_value(value: str) -> str:
    """RFC 4514 escaping of an attribute value inside a DN (enough for our names)."""
    out = "".join("\\" + ch if ch in ',+"\\<>;=' else ch for ch in value)
    if out.startswith(("#", " ")):
        out = "\\" + out
    return out


def expected_groups(uid: str) -> frozenset[str]:
    """Every group ``uid`` is in, directly or through nested groups (what a login must report)."""
    found: set[str] = set()
    frontier = {cn for cn, (users, _) in EXAMPLE_GROUPS.items() if uid in users}
    while frontier:
        found |= frontier
        frontier = {cn for cn, (_, groups) in EXAMPLE_GROUPS.items() if set(groups) & frontier} - found
    return frozenset(found)


def ssha(password: str) -> str:
    """{SSHA} userPassword value (slapd's default scheme) so no clear-text password sits in the database."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


@dataclass(frozen=True)
class ConfigPaths:
    data_dir: Path
    pid_file: Path
    args_file: Path
    ca_file: Path
    cert_file: Path
    key_file: Path


def render_config(paths: ConfigPaths) -> str:
    """cn=config for ``slapadd -n0 -F slapd.d``: modules, schema, TLS, one mdb database with the dynlist
    (nested memberOf) and ppolicy overlays, and root-over-ldapi (SASL EXTERNAL) as the only manager.

    The database has a rootDN without a password (nobody can bind as it): ppolicy records failures and
    locks accounts with internal modifications made as the rootDN; without one, locking after
    pwdMaxFailure fails with "ppolicy state change failed with rc=50" (insufficient access)."""
    schema = "\n".join(
        f"include: file://{SCHEMA_DIR}/{name}.ldif" for name in ("core", "cosine", "inetorgperson", "dyngroup")
    )
    return f"""\
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {paths.pid_file}
olcArgsFile: {paths.args_file}
olcLogLevel: stats
olcTLSCACertificateFile: {paths.ca_file}
olcTLSCertificateFile: {paths.cert_file}
olcTLSCertificateKeyFile: {paths.key_file}
olcTLSProtocolMin: 3.3
olcSecurity: simple_bind=64

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: {SLAPD_MODULE_DIR}
olcModuleLoad: back_mdb
olcModuleLoad: dynlist
olcModuleLoad: ppolicy

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

{schema}

dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by dn.exact={ROOT_PEERCRED} manage by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {SUFFIX}
olcDbDirectory: {paths.data_dir}
olcRootDN: cn=admin,{SUFFIX}
olcDbMaxSize: 268435456
olcDbIndex: objectClass eq
olcDbIndex: uid eq
olcDbIndex: cn eq
olcDbIndex: member eq
olcAccess: {{0}}to * by dn.exact={ROOT_PEERCRED} manage by * break
olcAccess: {{1}}to attrs=userPassword by self =xw by anonymous auth by * none
olcAccess: {{2}}to * by users read by * none

dn: olcOverlay={{0}}dynlist,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcDynListConfig
olcOverlay: {{0}}dynlist
olcDynListAttrSet: {{0}}groupOfURLs memberURL member+memberOf@groupOfNames*

dn: olcOverlay={{1}}ppolicy,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcPPolicyConfig
olcOverlay: {{1}}ppolicy
olcPPolicyDefault: cn=default,{POLICIES}
olcPPolicyUseLockout: TRUE
"""


def render_data(passwords: Mapping[str, str]) -> str:
    """The example tree for ``slapadd -n1``. ``passwords``: uid -> clear text (hashed here), plus the
    service account's under the key ``SERVICE_DN``."""
    blocks = [
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: virtplane lab\ndc: virtplane",
        *(f"dn: ou={ou},{SUFFIX}\nobjectClass: organizationalUnit\nou: {ou}"
          for ou in ("people", "groups", "services", "policies")),
        _policy("default", "pwdLockout: TRUE"),
        _policy("lockout", "pwdLockout: TRUE\npwdMaxFailure: 3\npwdLockoutDuration: 300"),
        f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: virtplane\n"
        f"description: virtplane searches users and groups as this account\n"
        f"userPassword: {ssha(passwords[SERVICE_DN])}",
    ]
    for user in EXAMPLE_USERS:
        lines = [
            f"dn: {user_dn(user.uid)}",
            "objectClass: inetOrgPerson",
            f"uid: {user.uid}",
            f"cn: {user.cn}",
            f"sn: {user.cn.split()[-1]}",
            f"userPassword: {ssha(passwords[user.uid])}",
        ]
        if user.locked:
            lines.append(f"pwdAccountLockedTime: {PERMANENT_LOCK}")
        if user.policy:
            lines.append(f"pwdPolicySubentry: cn={user.policy},{POLICIES}")
        blocks.append("\n".join(lines))
    for cn, (users, groups) in EXAMPLE_GROUPS.items():
        members = [user_dn(uid) for uid in users] + [group_dn(group) for group in groups]
        blocks.append("\n".join([f"dn: {group_dn(cn)}", "objectClass: groupOfNames", f"cn: {cn}",
                                 *(f"member: {dn}" for dn in members)]))
    return "\n\n".join(blocks) + "\n"


def _policy(cn: str, settings: str) -> str:
    return (f"dn: cn={cn},{POLICIES}\nobjectClass: organizationalRole\nobjectClass: pwdPolicy\ncn: {cn}\n"
            f"pwdAttribute: userPassword\n{settings}")
