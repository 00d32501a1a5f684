"""The offline Discord against the real discord.py: a small `commands.Bot` started with `bot.start(token)`
connects to the fake gateway, registers its commands over REST and answers interactions; the fake enforces
Discord's rules and records what Discord would have received."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands, ui
from discord.ext import commands

from services.offline.discord import FakeDiscord, point_discord_py_at
from services.offline.payloads import MODERATOR_PERMISSIONS, Perm, snowflake_seconds, time_snowflake

TOKEN = "fake-bot-token-for-tests"
PONG = bytes(range(256)) * 40


class ProbeBot(commands.Bot):
    """A minimal bot: each command reports how it ended in `outcomes[interaction id]`."""

    def __init__(self) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default(),
            guild_ready_timeout=0.1,
        )
        self.outcomes: dict[int, asyncio.Future[BaseException | None]] = {}
        self.release = asyncio.Event()
        self.caught: list[discord.HTTPException] = []

    async def setup_hook(self) -> None:
        command: app_commands.Command[Any, Any, None]
        for command in (ping, say, form, slow, progress, fetch, upload, buttons, dm, card, later):
            self.tree.add_command(command)
        await self.tree.sync()

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py sleeps 5 s before a re-IDENTIFY (Discord's identify rate limit); not against the fake."""

    def outcome(self, interaction_id: int) -> asyncio.Future[BaseException | None]:
        return self.outcomes.setdefault(interaction_id, asyncio.get_running_loop().create_future())

    async def ended(self, interaction_id: int) -> BaseException | None:
        return await asyncio.wait_for(self.outcome(interaction_id), timeout=5)


@contextlib.asynccontextmanager
async def report(interaction: discord.Interaction[ProbeBot]) -> AsyncIterator[None]:
    future = interaction.client.outcome(interaction.id)
    try:
        yield
    except Exception as error:  # the test asserts on it
        if not future.done():
            future.set_result(error)
    else:
        if not future.done():
            future.set_result(None)


@app_commands.command(name="ping", description="Defer, then edit the original with a file")
async def ping(interaction: discord.Interaction[ProbeBot]) -> None:
    async with report(interaction):
        await interaction.response.defer(thinking=True)
        await asyncio.sleep(0)
        file = discord.File(io.BytesIO(PONG), filename="pong.bin")
        await interaction.edit_original_response(content="pong", attachments=[file])


@app_commands.command(name="say", description="Answer with the given text")
async def say(interaction: discord.Interaction[ProbeBot], text: str) -> None:
    async with report(interaction):
        await interaction.response.send_message(text, allowed_mentions=discord.AllowedMentions.none())


class EchoModal(ui.Modal, title="Echo"):
    prompt: ui.Label[EchoModal] = ui.Label(text="Style / prompt", component=ui.TextInput(custom_id="echo:prompt"))
    lyrics: ui.Label[EchoModal] = ui.Label(
        text="Lyrics",
        component=ui.TextInput(custom_id="echo:lyrics", style=discord.TextStyle.paragraph, required=False),
    )

    async def on_submit(self, interaction: discord.Interaction[ProbeBot]) -> None:  # type: ignore[override]
        async with report(interaction):
            assert isinstance(self.prompt.component, ui.TextInput)
            assert isinstance(self.lyrics.component, ui.TextInput)
            text = f"prompt={self.prompt.component.value!r} lyrics={self.lyrics.component.value!r}"
            await interaction.response.send_message(text, ephemeral=True)


@app_commands.command(name="form", description="Answer with a modal")
async def form(interaction: discord.Interaction[ProbeBot]) -> None:
    async with report(interaction):
        await interaction.response.send_modal(EchoModal())


@app_commands.command(name="slow", description="Defer, wait to be released, then edit (or post in the channel)")
async def slow(interaction: discord.Interaction[ProbeBot]) -> None:
    async with report(interaction):
        await interaction.response.defer(thinking=True)
        await interaction.client.release.wait()
        try:
            await interaction.edit_original_response(content="done")
        except discord.HTTPException as error:
            interaction.client.caught.append(error)
            assert interaction.channel is not None and not isinstance(interaction.channel, discord.ForumChannel)
            await interaction.channel.send(f"{interaction.user.mention} done (late)")  # type: ignore[union-attr]


@app_commands.command(name="progress", description="Defer, then edit the original several times")
async def progress(interaction: discord.Interaction[ProbeBot], steps: int) -> None:
    async with report(interaction):
        await interaction.response.defer()
        for step in range(1, steps + 1):
            await interaction.edit_original_response(content=f"step {step}/{steps}")


@app_commands.command(name="fetch", description="Read an attached file and answer with its size")
async def fetch(interaction: discord.Interaction[ProbeBot], file: discord.Attachment) -> None:
    async with report(interaction):
        data = await file.read()
        await interaction.response.send_message(f"{file.filename}: {len(data)} bytes, {data[:5]!r}")


@app_commands.command(name="upload", description="Defer, then upload the given number of bytes")
async def upload(interaction: discord.Interaction[ProbeBot], size: int, count: int = 1) -> None:
    async with report(interaction):
        await interaction.response.defer()
        files = [discord.File(io.BytesIO(b"x" * size), filename=f"f{n}.mp3") for n in range(count)]
        await interaction.edit_original_response(attachments=files)


class PressView(ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=None)

    @ui.button(label="Press", custom_id="probe:press")
    async def press(self, interaction: discord.Interaction[ProbeBot], button: ui.Button[PressView]) -> None:
        async with report(interaction):
            await interaction.response.edit_message(content=f"pressed by {interaction.user.name}", view=None)


@app_commands.command(name="buttons", description="Answer with a button")
async def buttons(interaction: discord.Interaction[ProbeBot]) -> None:
    async with report(interaction):
        await interaction.response.send_message("press it", view=PressView())


@app_commands.command(name="dm", description="Write to the member in private")
async def dm(interaction: discord.Interaction[ProbeBot]) -> None:
    async with report(interaction):
        await interaction.response.defer(ephemeral=True, thinking=True)
        await interaction.user.send("hello in private")
        await interaction.edit_original_response(content="sent")


@app_commands.command(name="card", description="Answer with a Components v2 card")
async def card(interaction: discord.Interaction[ProbeBot]) -> None:
    async with report(interaction):
        await interaction.response.defer(thinking=True)
        view: ui.LayoutView = ui.LayoutView()
        view.add_item(ui.Container(ui.TextDisplay("## Card @everyone"), ui.File("attachment://song.mp3")))
        files = [discord.File(io.BytesIO(b"ID3"), "song.mp3"), discord.File(io.BytesIO(b"la la"), "lyrics.txt")]
        await interaction.edit_original_response(view=view, attachments=files)


@app_commands.command(name="later", description="Defer, then answer with a followup")
async def later(interaction: discord.Interaction[ProbeBot]) -> None:
    async with report(interaction):
        await interaction.response.defer(thinking=True)
        await interaction.followup.send("first followup", wait=True)
        await interaction.followup.send("second followup", ephemeral=True)


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(token=TOKEN, heartbeat_interval=0.5) as server:
        yield server


@pytest.fixture
async def bot(fake: FakeDiscord) -> AsyncIterator[ProbeBot]:
    with point_discord_py_at(fake):
        probe = ProbeBot()
        task = asyncio.create_task(probe.start(TOKEN))
        ready = asyncio.create_task(probe.wait_until_ready())
        done, _ = await asyncio.wait({task, ready}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            await probe.close()
            await task
            pytest.fail("the bot never became ready against the fake")
        try:
            yield probe
        finally:
            await probe.close()
            await task


# --- login, gateway, commands ------------------------------------------------------------------------------------


async def test_bot_logs_in_identifies_and_syncs(fake: FakeDiscord, bot: ProbeBot) -> None:
    me = fake.find_requests("GET", "^/users/@me$")[0]
    assert me.auth == "Bot" and "Authorization" not in me.headers
    assert fake.find_requests("GET", "^/oauth2/applications/@me$")[0].status == 200
    assert bot.application_id == fake.application_id
    assert bot.user is not None and bot.user.id == fake.bot_user.id

    guild = bot.get_guild(fake.guild.id)
    assert guild is not None and guild.name == fake.guild.name
    channel = guild.get_channel(fake.channel.id)
    assert isinstance(channel, discord.TextChannel)
    assert channel.permissions_for(guild.me).attach_files

    assert fake.gateway.identify_count == 1
    identify = next(d for c in fake.gateway.connections for op, d in c.received if op == 2)
    assert "token" not in identify and identify["intents"] == discord.Intents.default().value
    await fake.wait_until(lambda: fake.gateway.connections[0].heartbeats >= 1)

    assert len(fake.command_syncs) == 1
    names = {"ping", "say", "form", "slow", "progress", "fetch", "upload", "buttons", "dm", "card", "later"}
    assert {c["name"] for c in fake.commands()} == names
    assert all(c["id"] and c["application_id"] == str(fake.application_id) for c in fake.commands())


async def test_wrong_token_is_refused(fake: FakeDiscord) -> None:
    with point_discord_py_at(fake):
        probe = ProbeBot()
        with pytest.raises(discord.LoginFailure):
            await probe.login("not-the-token")
        await probe.close()


# --- the interaction life cycle ---------------------------------------------------------------------------------


async def test_defer_then_edit_with_a_file(fake: FakeDiscord, bot: ProbeBot) -> None:
    record = await fake.send_interaction(fake.slash("ping"))
    assert await bot.ended(record.id) is None

    callback = fake.callback(record.id)
    deadline = fake.rules.callback_deadline
    assert deadline is not None
    assert callback is not None and callback.type == 5 and callback.age < deadline
    [post] = fake.find_requests("POST", "/callback$")
    assert post.query == {"with_response": "1"} and post.auth is None

    [patch] = fake.find_requests("PATCH", "/messages/@original$")
    assert patch.headers["Content-Type"].startswith("multipart/form-data")
    assert patch.json["attachments"] == [{"id": 0, "filename": "pong.bin"}]
    [part] = patch.files
    assert (part.field, part.filename, part.data) == ("files[0]", "pong.bin", PONG)

    original = fake.original(record.id)
    assert original is not None and not original.loading and original.content == "pong"
    assert original.attachment("pong.bin").data == PONG
    assert [edit.content for edit in fake.edits(record.id)] == ["pong"]
    assert original.history[0].loading

    async with aiohttp.ClientSession() as session, session.get(original.attachment("pong.bin").url) as response:
        assert await response.read() == PONG


async def test_modal_round_trip_in_both_forms(fake: FakeDiscord, bot: ProbeBot) -> None:
    record = await fake.send_interaction(fake.slash("form"))
    callback = await fake.wait_for_callback(record.id)
    assert callback.type == 9 and callback.data["title"] == "Echo"
    assert [c["type"] for c in callback.data["components"]] == [18, 18]

    submitted = await fake.send_interaction(fake.submit_modal(record.id, {"Style / prompt": "sea shanty"}))
    assert await bot.ended(submitted.id) is None
    answer = fake.original(submitted.id)
    assert answer is not None and answer.ephemeral
    assert answer.content == "prompt='sea shanty' lyrics=''"

    again = await fake.send_interaction(fake.slash("form"))  # a submitted modal is done: open a new one
    modal = (await fake.wait_for_callback(again.id)).data
    row_form = fake.modal_submit(modal["custom_id"], {"echo:prompt": "jazz", "echo:lyrics": "[verse]\nla"}, form="row")
    by_row = await fake.send_interaction(row_form)
    assert await bot.ended(by_row.id) is None
    answer = fake.original(by_row.id)
    assert answer is not None and answer.content == "prompt='jazz' lyrics='[verse]\\nla'"
    assert answer not in fake.channel_messages(fake.channel)
    assert answer in fake.channel_messages(fake.channel, visible_to=fake.user)


async def test_attachment_option_is_downloadable(fake: FakeDiscord, bot: ProbeBot) -> None:
    lyrics = fake.upload("lyrics.txt", b"[verse]\nhello", "text/plain; charset=utf-8")
    record = await fake.send_interaction(fake.slash("fetch", {"file": lyrics}))
    assert await bot.ended(record.id) is None
    original = fake.original(record.id)
    assert original is not None and original.content == "lyrics.txt: 13 bytes, b'[vers'"


async def test_mentions_follow_allowed_mentions(fake: FakeDiscord, bot: ProbeBot) -> None:
    role = fake.guild.everyone
    text = f"@everyone {fake.user.mention} <@&{role.id}>"
    record = await fake.send_interaction(fake.slash("say", {"text": text}))
    assert await bot.ended(record.id) is None
    original = fake.original(record.id)
    assert original is not None and original.content == text
    assert not original.pings().anyone


async def test_button_click_updates_the_message(fake: FakeDiscord, bot: ProbeBot) -> None:
    record = await fake.send_interaction(fake.slash("buttons"))
    assert await bot.ended(record.id) is None
    message = fake.original(record.id)
    assert message is not None and [b["custom_id"] for b in message.buttons()] == ["probe:press"]

    clicker = fake.add_user("clicker")
    click = await fake.send_interaction(fake.click("probe:press", user=clicker))
    assert await bot.ended(click.id) is None
    assert fake.callback(click.id) is not None and fake.callback(click.id).type == 7  # type: ignore[union-attr]
    assert fake.original(click.id) is message
    assert message.content == "pressed by clicker" and message.buttons() == []
    assert [m.content for m in fake.channel_messages(fake.channel)] == ["pressed by clicker"]


async def test_direct_messages_and_closed_dms(fake: FakeDiscord, bot: ProbeBot) -> None:
    record = await fake.send_interaction(fake.slash("dm"))
    assert await bot.ended(record.id) is None
    assert [m.content for m in fake.dms(fake.user)] == ["hello in private"]
    original = fake.original(record.id)
    assert original is not None and original.ephemeral and original.content == "sent"

    shy = fake.add_user("shy")
    fake.close_dms(shy)
    refused = await fake.send_interaction(fake.slash("dm", user=shy))
    error = await bot.ended(refused.id)
    assert isinstance(error, discord.Forbidden) and error.code == 50007
    assert fake.dms(shy) == []


async def test_slash_command_in_a_dm(fake: FakeDiscord, bot: ProbeBot) -> None:
    record = await fake.send_interaction(fake.slash("say", {"text": "in private"}, dm=True))
    assert await bot.ended(record.id) is None
    assert "member" not in record.payload and record.payload["context"] == 1
    assert [m.content for m in fake.dms(fake.user)] == ["in private"]


async def test_components_v2_card_hides_unreferenced_files(fake: FakeDiscord, bot: ProbeBot) -> None:
    record = await fake.send_interaction(fake.slash("card"))
    assert await bot.ended(record.id) is None
    original = fake.original(record.id)
    assert original is not None and original.components_v2 and original.content == ""
    assert [c["type"] for c in original.all_components()] == [17, 10, 13]
    assert [a.filename for a in original.attachments] == ["song.mp3", "lyrics.txt"]
    assert [a.filename for a in original.visible_attachments()] == ["song.mp3"]
    assert original.attachment("song.mp3").content_type == "audio/mpeg"
    assert "## Card" in original.text() and original.pings().everyone  # v2 text pings unless disallowed


async def test_first_followup_replaces_the_thinking_message(fake: FakeDiscord, bot: ProbeBot) -> None:
    record = await fake.send_interaction(fake.slash("later"))
    assert await bot.ended(record.id) is None
    original = fake.original(record.id)
    assert original is not None and original.content == "first followup" and not original.loading
    [followup] = fake.followups(record.id)
    assert followup.content == "second followup" and followup.ephemeral
    assert fake.find_requests("POST", "/webhooks/")[0].query == {"wait": "1", "with_components": "0"}


# --- Discord's rules ----------------------------------------------------------------------------------------------


async def test_late_callback_is_unknown_interaction(fake: FakeDiscord, bot: ProbeBot) -> None:
    past = datetime.now(UTC) - timedelta(seconds=10)
    record = await fake.send_interaction(fake.slash("ping", created_at=past))
    error = await bot.ended(record.id)
    assert isinstance(error, discord.NotFound) and error.code == 10062
    assert fake.callback(record.id) is None and fake.original(record.id) is None


async def test_second_callback_is_already_acknowledged(fake: FakeDiscord, bot: ProbeBot) -> None:
    payload = fake.slash("say", {"text": "once"})
    first = await fake.send_interaction(payload)
    assert await bot.ended(first.id) is None
    bot.outcomes.pop(first.id)
    await fake.send_interaction(payload)  # delivered again, as after a replay
    error = await bot.ended(first.id)
    assert isinstance(error, discord.HTTPException) and error.status == 400 and error.code == 40060


async def test_expired_token_then_channel_fallback(fake: FakeDiscord, bot: ProbeBot) -> None:
    record = await fake.send_interaction(fake.slash("slow"))
    await fake.wait_for_callback(record.id)
    fake.expire_token(record.id)
    bot.release.set()
    assert await bot.ended(record.id) is None
    [error] = bot.caught
    assert error.status == 401 and error.code == 50027
    [late] = fake.channel_messages(fake.channel)[-1:]
    assert late.content == f"{fake.user.mention} done (late)" and late.author.id == fake.bot_user.id
    [post] = fake.find_requests("POST", rf"^/channels/{fake.channel.id}/messages$")
    assert post.auth == "Bot"


async def test_channel_without_permission_is_forbidden(fake: FakeDiscord, bot: ProbeBot) -> None:
    await fake.set_bot_permissions(fake.channel, Perm.VIEW_CHANNEL | Perm.READ_MESSAGE_HISTORY)
    channel = bot.get_channel(fake.channel.id)
    assert isinstance(channel, discord.TextChannel)
    await fake.wait_until(lambda: not channel.permissions_for(channel.guild.me).send_messages)
    with pytest.raises(discord.Forbidden) as raised:
        await channel.send("hello")
    assert raised.value.code == 50013
    record = await fake.send_interaction(fake.slash("say", {"text": "still fine"}))
    assert await bot.ended(record.id) is None  # interaction responses need no channel permission
    assert record.payload["app_permissions"] == str(int(Perm.VIEW_CHANNEL | Perm.READ_MESSAGE_HISTORY))


async def test_upload_over_the_interaction_limit_is_413(fake: FakeDiscord, bot: ProbeBot) -> None:
    record = await fake.send_interaction(fake.slash("upload", {"size": 2048}, attachment_size_limit=1024))
    error = await bot.ended(record.id)
    assert isinstance(error, discord.HTTPException) and error.status == 413 and error.code == 40005
    fits = await fake.send_interaction(fake.slash("upload", {"size": 1024}, attachment_size_limit=1024))
    assert await bot.ended(fits.id) is None


async def test_more_than_ten_attachments_is_30015(fake: FakeDiscord, bot: ProbeBot) -> None:
    record = await fake.send_interaction(fake.slash("upload", {"size": 10, "count": 11}))
    error = await bot.ended(record.id)
    assert isinstance(error, discord.HTTPException) and error.code == 30015


async def test_content_over_2000_is_invalid_form_body(fake: FakeDiscord, bot: ProbeBot) -> None:
    record = await fake.send_interaction(fake.slash("say", {"text": "x" * 2001}))
    error = await bot.ended(record.id)
    assert isinstance(error, discord.HTTPException) and error.status == 400 and error.code == 50035
    assert "content" in error.text and fake.callback(record.id) is None


async def test_rate_limited_edit_is_waited_out(fake: FakeDiscord, bot: ProbeBot) -> None:
    fake.fail_next("PATCH", "/messages/@original$", 429, retry_after=0.05)
    record = await fake.send_interaction(fake.slash("ping"))
    assert await bot.ended(record.id) is None
    first, second = fake.find_requests("PATCH", "/messages/@original$")
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 0.049  # discord.py slept retry_after before retrying
    original = fake.original(record.id)
    assert original is not None and original.attachment("pong.bin").data == PONG


async def test_429_without_via_raises(fake: FakeDiscord, bot: ProbeBot) -> None:
    fake.fail_next("PATCH", "/messages/@original$", 429, retry_after=0.05, via=False)
    record = await fake.send_interaction(fake.slash("ping"))
    error = await bot.ended(record.id)
    assert isinstance(error, discord.HTTPException) and error.status == 429


async def test_edit_bucket_slows_the_client(fake: FakeDiscord, bot: ProbeBot) -> None:
    bucket = fake.limit_bucket("PATCH", "/messages/@original$", limit=2, per=0.2, announce=False)
    record = await fake.send_interaction(fake.slash("progress", {"steps": 4}))
    assert await bot.ended(record.id) is None
    assert bucket.limited >= 1
    statuses = [r.status for r in fake.find_requests("PATCH", "/messages/@original$")]
    assert statuses.count(200) == 4 and 429 in statuses
    assert [edit.content for edit in fake.edits(record.id)] == [f"step {n}/4" for n in range(1, 5)]


# --- gateway drops ------------------------------------------------------------------------------------------------


async def test_resume_replays_what_was_missed(fake: FakeDiscord, bot: ProbeBot) -> None:
    resumed = asyncio.Event()

    async def on_resumed() -> None:
        resumed.set()

    bot.add_listener(on_resumed)
    await fake.drop_gateway(resume=True)
    record = await fake.send_interaction(fake.slash("ping"))  # sent while the bot is away
    assert await bot.ended(record.id) is None
    await asyncio.wait_for(resumed.wait(), timeout=5)
    assert (fake.gateway.identify_count, fake.gateway.resume_count) == (1, 1)
    assert fake.gateway.connections[-1].path == "/gateway-resume"

    after = await fake.send_interaction(fake.slash("say", {"text": "after the resume"}))
    assert await bot.ended(after.id) is None


async def test_abrupt_drop_and_invalid_session_reidentify(fake: FakeDiscord, bot: ProbeBot) -> None:
    await fake.drop_gateway(resume=False, abrupt=True)
    await fake.wait_until(lambda: fake.gateway.identify_count == 2, what="a second IDENTIFY")
    first, resumed, identified = fake.gateway.connections
    assert first.close_code == 1006  # no close frame
    assert [op for op, _ in resumed.received if op != 1] == [6]  # RESUME, answered with op 9
    assert [op for op, _ in identified.received if op != 1] == [2]
    record = await fake.send_interaction(fake.slash("say", {"text": "new session"}))
    assert await bot.ended(record.id) is None


# --- payload helpers ------------------------------------------------------------------------------------------------


def test_snowflakes_match_discord_py(fake: FakeDiscord) -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert time_snowflake(moment) == discord.utils.time_snowflake(moment)
    assert snowflake_seconds(time_snowflake(moment)) == moment.timestamp()
    payload = fake.slash("admin quota set", {"user": fake.user, "limit": 3}, permissions=MODERATOR_PERMISSIONS)
    [group] = payload["data"]["options"]
    assert (group["type"], group["options"][0]["type"]) == (2, 1)
    assert group["options"][0]["options"] == [
        {"name": "user", "type": 6, "value": str(fake.user.id)},
        {"name": "limit", "type": 4, "value": 3},
    ]
    assert payload["member"]["permissions"] == str(int(MODERATOR_PERMISSIONS))
    assert payload["data"]["resolved"]["users"][str(fake.user.id)]["username"] == "member"


# --- REST rules without a bot ---------------------------------------------------------------------------------------


def _multipart(payload: dict[str, object], files: dict[str, tuple[str, bytes]]) -> aiohttp.FormData:
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("payload_json", json.dumps(payload), content_type="application/json")
    for field, (filename, data) in files.items():
        form.add_field(field, data, filename=filename, content_type="application/octet-stream")
    return form


async def test_rest_rules_for_bot_posts(fake: FakeDiscord) -> None:
    url = f"{fake.api_base}/channels/{fake.channel.id}/messages"
    auth = {"Authorization": f"Bot {TOKEN}"}
    async with aiohttp.ClientSession(headers=auth) as session:

        async def post(body: dict[str, object]) -> tuple[int, dict[str, object]]:
            async with session.post(url, json=body) as response:
                assert response.headers["Content-Type"] == "application/json"
                return response.status, await response.json()

        assert await post({"embeds": [{"description": "d" * 4097}]}) == (
            400,
            {
                "message": "Invalid Form Body",
                "code": 50035,
                "errors": {
                    "embeds": {
                        "0": {
                            "description": {
                                "_errors": [
                                    {"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 4096 or fewer in length."}
                                ]
                            }
                        }
                    }
                },
            },
        )
        status, body = await post({"embeds": [{"description": "d" * 4000}, {"description": "e" * 2001}]})
        assert (status, body["code"]) == (400, 50035) and "embeds" in body["errors"]  # type: ignore[operator]
        assert (await post({}))[1]["code"] == 50006
        fake.fail_next("POST", r"/channels/\d+/messages$", 403, 50013, times=2)
        assert [(await post({"content": "hi"}))[1].get("code") for _ in range(3)] == [50013, 50013, None]

        form = _multipart({"content": "two files"}, {"files[0]": ("a.mp3", b"A" * 10), "files[1]": ("b.txt", b"B")})
        async with session.post(url, data=form) as response:
            created = await response.json()
        kept = created["attachments"][0]
        assert [a["content_type"] for a in created["attachments"]] == ["audio/mpeg", "text/plain; charset=utf-8"]
        edit = _multipart(
            {"attachments": [{"id": kept["id"]}, {"id": 0, "filename": "c.png"}]}, {"files[0]": ("c.png", b"C")}
        )
        async with session.patch(f"{url}/{created['id']}", data=edit) as response:
            edited = await response.json()
        assert [a["filename"] for a in edited["attachments"]] == ["a.mp3", "c.png"]
        assert edited["content"] == "two files" and edited["edited_timestamp"] is not None
        async with session.get(kept["url"]) as response:
            assert await response.read() == b"A" * 10

        fake.channel.upload_limit = 5
        form = _multipart({"content": "big"}, {"files[0]": ("a.mp3", b"A" * 6)})
        async with session.post(url, data=form) as response:
            assert (response.status, (await response.json())["code"]) == (413, 40005)

        async with session.delete(f"{fake.api_base}/users/@me") as response:
            assert response.status == 405
        async with session.get(f"{fake.api_base}/nothing/here") as response:
            assert response.status == 404
    async with aiohttp.ClientSession() as anonymous, anonymous.get(f"{fake.api_base}/users/@me") as response:
        assert (response.status, (await response.json())["code"]) == (401, 0)
    assert all("Authorization" not in r.headers for r in fake.requests)
    assert [r.auth for r in fake.requests[-2:]] == ["Bot", None]


async def test_announced_bucket_makes_discord_py_wait_without_429(fake: FakeDiscord, bot: ProbeBot) -> None:
    fake.limit_bucket("PATCH", "/messages/@original$", limit=2, per=0.2, announce=True)
    record = await fake.send_interaction(fake.slash("progress", {"steps": 4}))
    assert await bot.ended(record.id) is None
    patches = fake.find_requests("PATCH", "/messages/@original$")
    assert [r.status for r in patches] == [200] * 4
    assert patches[2].at - patches[1].at >= 0.1  # the client waited for the announced reset
