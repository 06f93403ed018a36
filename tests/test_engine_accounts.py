"""Tenants and users: creation, lookup, name rules, uniqueness, per-tenant ids, authentication."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import NOW_MS, PASSWORD, create_org, refused

from engine import (
    Conflict,
    CreateGroup,
    CreateTenant,
    CreateUser,
    Engine,
    Invalid,
    Limits,
    NotFound,
    OpenDirect,
    TenantCreated,
    Unauthenticated,
    UserCreated,
    WeakPassword,
    check_password_policy,
    hash_password,
    verify_password,
)
from engine.records import TenantRecord, UserRecord

BAD_NAMES = [
    "",
    "Acme",  # upper case
    "-acme",  # must start with a letter or digit
    ".acme",
    "_acme",
    "acme corp",
    "acme\n",  # `$` in a regex matches before a trailing newline: must still be refused
    "acme\t",
    "acmé",
    "acme/x",
    "acme@x",
    "a" * 65,
]
GOOD_NAMES = ["a", "7", "0day", "a.b_c-d", "a" * 64]


def new_user(
    tenant: int, login: str, password_hash: str, display_name: str = "Some One"
) -> CreateUser:
    return CreateUser(
        tenant=tenant, login=login, display_name=display_name, password_hash=password_hash
    )


# -- tenants ---------------------------------------------------------------------------------


def test_create_tenant_stores_name_and_creation_time(engine: Engine) -> None:
    assert engine.apply(CreateTenant(name="acme"), NOW_MS) == TenantCreated(1)

    assert engine.tenant(1) == TenantRecord("acme", NOW_MS, disabled=False)
    assert engine.find_tenant("acme") == 1
    assert engine.tenants() == [(1, TenantRecord("acme", NOW_MS))]


def test_tenant_ids_start_at_one_and_increase_in_creation_order(engine: Engine) -> None:
    results = engine.apply_batch([CreateTenant(name=n) for n in ("a", "b", "c")], NOW_MS)

    assert results == [TenantCreated(1), TenantCreated(2), TenantCreated(3)]
    assert [(t, r.name) for t, r in engine.tenants()] == [(1, "a"), (2, "b"), (3, "c")]


def test_a_taken_tenant_name_is_a_conflict_and_creates_nothing(engine: Engine) -> None:
    engine.apply(CreateTenant(name="acme"), NOW_MS)

    error = refused(engine, CreateTenant(name="acme"), NOW_MS + 1)

    assert (type(error), error.code) == (Conflict, "conflict")
    assert engine.tenants() == [(1, TenantRecord("acme", NOW_MS))]
    # The refused op did not use up an id.
    assert engine.apply(CreateTenant(name="other"), NOW_MS) == TenantCreated(2)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_malformed_tenant_name_is_invalid(engine: Engine, name: str) -> None:
    error = refused(engine, CreateTenant(name=name))

    assert (type(error), error.code) == (Invalid, "invalid")
    assert engine.tenants() == []


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_a_well_formed_tenant_name_is_accepted(engine: Engine, name: str) -> None:
    tenant = engine.apply(CreateTenant(name=name), NOW_MS).tenant

    assert engine.find_tenant(name) == tenant


def test_the_name_length_limit_comes_from_the_limits(tmp_path: Path) -> None:
    engine = Engine(tmp_path / "store", map_size=2**24, limits=Limits(max_name_chars=5))
    try:
        assert engine.apply(CreateTenant(name="abcde"), NOW_MS) == TenantCreated(1)
        error = refused(engine, CreateTenant(name="abcdef"))
        assert (type(error), error.code) == (Invalid, "invalid")
    finally:
        engine.close()


def test_a_tenant_name_no_tenant_can_have_is_not_found_without_asking_the_store(
    engine: Engine,
) -> None:
    # LMDB refuses an empty key outright (BadValsizeError): the name must not reach it.
    for name in ("", "a" * 600):
        with pytest.raises(NotFound) as refusal:
            engine.find_tenant(name)
        assert refusal.value.code == "not_found"
    with pytest.raises(Unauthenticated):
        engine.authenticate(0, "", PASSWORD)


def test_an_unknown_tenant_is_not_found(engine: Engine) -> None:
    engine.apply(CreateTenant(name="acme"), NOW_MS)

    with pytest.raises(NotFound) as by_id:
        engine.tenant(2)
    with pytest.raises(NotFound) as by_name:
        engine.find_tenant("globex")

    assert by_id.value.code == by_name.value.code == "not_found"


# -- users -----------------------------------------------------------------------------------


def test_create_user_stores_login_display_name_hash_and_time(
    engine: Engine, password_hash: str
) -> None:
    tenant = engine.apply(CreateTenant(name="acme"), NOW_MS).tenant

    result = engine.apply(new_user(tenant, "alice", password_hash, "Alice Liddell"), NOW_MS + 5)

    assert result == UserCreated(1)
    assert engine.user(tenant, 1) == UserRecord(
        "alice", "Alice Liddell", password_hash, NOW_MS + 5, disabled=False
    )
    assert engine.find_user(tenant, "alice") == 1


def test_users_lists_the_tenants_users_in_id_order(engine: Engine) -> None:
    acme = create_org(engine, "acme")

    listed = engine.users(acme.tenant)

    assert [(user, record.login) for user, record in listed] == [
        (acme.alice, "alice"), (acme.bob, "bob"), (acme.carol, "carol"), (acme.dave, "dave"),
    ]


def test_each_tenant_numbers_its_users_and_conversations_from_one_with_no_gaps(
    engine: Engine, password_hash: str
) -> None:
    # Interleaved, as two organisations' activity is: neither sees the other's as gaps.
    acme = engine.apply(CreateTenant(name="acme"), NOW_MS).tenant
    globex = engine.apply(CreateTenant(name="globex"), NOW_MS).tenant
    users: dict[int, list[int]] = {acme: [], globex: []}
    convs: dict[int, list[int]] = {acme: [], globex: []}
    for round_ in range(3):
        for tenant in (acme, globex, globex):
            made = engine.apply(
                new_user(tenant, f"u{len(users[tenant])}", password_hash), NOW_MS
            )
            assert isinstance(made, UserCreated)
            users[tenant].append(made.user)
        for tenant in (globex, acme):
            group = CreateGroup(tenant=tenant, creator=users[tenant][0], title=f"g{round_}")
            convs[tenant].append(engine.apply(group, NOW_MS).conv)  # type: ignore[union-attr]
        if round_:
            direct = OpenDirect(tenant=acme, user=users[acme][0], peer=users[acme][-1])
            convs[acme].append(engine.apply(direct, NOW_MS).conv)  # type: ignore[union-attr]

    assert users == {acme: [1, 2, 3], globex: [1, 2, 3, 4, 5, 6]}
    assert convs == {acme: [1, 2, 3, 4, 5], globex: [1, 2, 3]}
    assert engine.find_user(acme, "u0") == engine.find_user(globex, "u0") == 1
    assert [user for user, _ in engine.users(globex)] == [1, 2, 3, 4, 5, 6]


def test_ids_are_never_reused_after_a_refused_creation_or_a_reopen(
    tmp_path: Path, password_hash: str
) -> None:
    path = tmp_path / "store"
    engine = Engine(path, map_size=2**24)
    acme = engine.apply(CreateTenant(name="acme"), NOW_MS).tenant  # type: ignore[union-attr]
    assert engine.apply(new_user(acme, "alice", password_hash), NOW_MS) == UserCreated(1)
    refused(engine, new_user(acme, "alice", password_hash))  # a taken login takes no id
    engine.close()

    reopened = Engine(path, map_size=2**24)
    try:
        assert reopened.apply(new_user(acme, "bob", password_hash), NOW_MS) == UserCreated(2)
    finally:
        reopened.close()


def test_a_user_in_an_unknown_tenant_is_not_found(engine: Engine, password_hash: str) -> None:
    error = refused(engine, new_user(1, "alice", password_hash))

    assert (type(error), error.code) == (NotFound, "not_found")


@pytest.mark.parametrize("login", BAD_NAMES)
def test_a_malformed_login_is_invalid(engine: Engine, password_hash: str, login: str) -> None:
    tenant = engine.apply(CreateTenant(name="acme"), NOW_MS).tenant

    error = refused(engine, new_user(tenant, login, password_hash))

    assert (type(error), error.code) == (Invalid, "invalid")
    assert engine.users(tenant) == []


@pytest.mark.parametrize("login", GOOD_NAMES)
def test_a_well_formed_login_is_accepted(engine: Engine, password_hash: str, login: str) -> None:
    tenant = engine.apply(CreateTenant(name="acme"), NOW_MS).tenant

    user = engine.apply(new_user(tenant, login, password_hash), NOW_MS).user

    assert engine.find_user(tenant, login) == user


@pytest.mark.parametrize("display_name", ["", "x" * 201])
def test_a_display_name_outside_1_to_200_characters_is_invalid(
    engine: Engine, password_hash: str, display_name: str
) -> None:
    tenant = engine.apply(CreateTenant(name="acme"), NOW_MS).tenant

    error = refused(engine, new_user(tenant, "alice", password_hash, display_name))

    assert (type(error), error.code) == (Invalid, "invalid")


def test_a_display_name_may_hold_any_characters_up_to_the_limit(
    engine: Engine, password_hash: str
) -> None:
    tenant = engine.apply(CreateTenant(name="acme"), NOW_MS).tenant
    name = "Zoë 李" + "x" * 195

    user = engine.apply(new_user(tenant, "zoe", password_hash, name), NOW_MS).user

    assert engine.user(tenant, user).display_name == name


@pytest.mark.parametrize(
    "stored", ["correct horse battery", "", "$argon2i$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"]
)
def test_a_password_hash_that_is_not_argon2id_is_invalid(engine: Engine, stored: str) -> None:
    tenant = engine.apply(CreateTenant(name="acme"), NOW_MS).tenant

    error = refused(engine, new_user(tenant, "alice", stored))

    assert (type(error), error.code) == (Invalid, "invalid")


def test_a_taken_login_is_a_conflict_within_the_tenant_only(
    engine: Engine, password_hash: str
) -> None:
    acme = create_org(engine, "acme")
    globex = engine.apply(CreateTenant(name="globex"), NOW_MS).tenant

    error = refused(engine, new_user(acme.tenant, "alice", password_hash))
    elsewhere = engine.apply(new_user(globex, "alice", password_hash), NOW_MS)

    assert (type(error), error.code) == (Conflict, "conflict")
    assert engine.find_user(acme.tenant, "alice") == acme.alice
    assert elsewhere == UserCreated(1)  # globex's first user


def test_an_unknown_user_or_login_is_not_found(engine: Engine) -> None:
    acme = create_org(engine, "acme")

    with pytest.raises(NotFound) as by_id:
        engine.user(acme.tenant, acme.dave + 1)
    with pytest.raises(NotFound) as by_login:
        engine.find_user(acme.tenant, "mallory")

    assert by_id.value.code == by_login.value.code == "not_found"


# -- authentication --------------------------------------------------------------------------


def test_authenticate_returns_the_user_for_the_right_password(engine: Engine) -> None:
    acme = create_org(engine, "acme")

    assert engine.authenticate(acme.tenant, "bob", PASSWORD) == acme.bob


@pytest.mark.parametrize(
    ("login", "password"),
    [
        ("bob", "correct horse batterY"),  # wrong password
        ("bob", ""),
        ("bob", "x" * 2000),  # over MAX_PASSWORD_BYTES: refused without hashing
        ("mallory", PASSWORD),  # unknown login
        ("", PASSWORD),
    ],
)
def test_authenticate_refuses_with_one_message_whatever_was_wrong(
    engine: Engine, login: str, password: str
) -> None:
    acme = create_org(engine, "acme")

    with pytest.raises(Unauthenticated) as refusal:
        engine.authenticate(acme.tenant, login, password)

    assert refusal.value.code == "unauthenticated"
    assert refusal.value.message == "wrong login or password"


def test_authenticate_in_an_unknown_tenant_is_unauthenticated(engine: Engine) -> None:
    acme = create_org(engine, "acme")

    with pytest.raises(Unauthenticated) as refusal:
        engine.authenticate(acme.tenant + 1, "bob", PASSWORD)

    assert refusal.value.code == "unauthenticated"


def test_authenticate_does_not_accept_a_login_of_another_tenant(engine: Engine) -> None:
    acme = create_org(engine, "acme")
    globex = engine.apply(CreateTenant(name="globex"), NOW_MS).tenant

    with pytest.raises(Unauthenticated) as refusal:
        engine.authenticate(globex, "bob", PASSWORD)

    assert refusal.value.code == "unauthenticated"
    assert engine.authenticate(acme.tenant, "bob", PASSWORD) == acme.bob


# -- password hashing ------------------------------------------------------------------------


def test_hash_password_is_argon2id_and_verifies_only_the_same_password() -> None:
    phc = hash_password("s3cret-pass", rng=lambda n: bytes(n))

    assert phc.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert verify_password(phc, "s3cret-pass") is True
    assert verify_password(phc, "s3cret-pasS") is False


def test_hash_password_takes_its_salt_from_the_rng() -> None:
    first = hash_password("s3cret-pass", rng=lambda n: b"a" * n)

    assert hash_password("s3cret-pass", rng=lambda n: b"a" * n) == first
    assert hash_password("s3cret-pass", rng=lambda n: b"b" * n) != first


@pytest.mark.parametrize("password", ["", "seven77", "x" * 1025, "é" * 513])
def test_hash_password_refuses_too_short_or_too_long_passwords(password: str) -> None:
    with pytest.raises(Invalid) as refusal:  # a WeakPassword is still an Invalid
        hash_password(password)
    with pytest.raises(WeakPassword):
        check_password_policy(password)

    assert (type(refusal.value), refusal.value.code) == (WeakPassword, "weak_password")
    check_password_policy("eight888")  # the limits themselves are allowed
    check_password_policy("x" * 1024)
