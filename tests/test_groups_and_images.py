"""End to end: groups, albums, image files, stickers and the image pipeline, through the fakes."""

from __future__ import annotations

import asyncio
import io
import zlib

from PIL import Image

from tests.conftest import make_photo
from tests.fakes.telegram_server import FakeTelegram, group_chat, make_user, message_update, private_chat
from tests.fakes.vision_server import stream_reply
from tests.support import answered, final_texts

ALICE = make_user(1001, "Alice", "en")
BOB = make_user(1002, "Bob", "en")
GROUP = group_chat(-100200300)
FORUM = group_chat(-100900900, title="Forum", is_forum=True)
BOT_NAME = "@vision_test_bot"


def mention(text: str, name: str = BOT_NAME) -> list[dict]:
    """A mention entity for the first `name` in `text` (offsets in UTF-16 code units)."""
    start = text.index(name)
    return [{"type": "mention", "offset": len(text[:start].encode("utf-16-le")) // 2,
             "length": len(name.encode("utf-16-le")) // 2}]


def push(telegram: FakeTelegram, chat: dict, user: dict, **fields: object) -> dict:
    update = message_update(chat, user, **fields)  # type: ignore[arg-type]
    telegram.push_update(update)
    return update["message"]


async def answered_messages(telegram: FakeTelegram, chat_id: int, count: int = 1) -> list[dict]:
    await answered(telegram, chat_id, count)
    return telegram.chat_messages(chat_id)


def jpeg_with_gps(width: int, height: int) -> bytes:
    image = Image.new("RGB", (width, height), (90, 140, 60))
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    exif[0x8825] = {1: "N", 2: (55.0, 45.0, 21.0), 3: "E", 4: (37.0, 37.0, 4.0)}
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif, quality=90)
    return out.getvalue()


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def document(telegram: FakeTelegram, content: bytes, mime_type: str, file_name: str,
             file_size: int | None = None) -> dict:
    return {**telegram.add_file(content, file_size=file_size), "mime_type": mime_type, "file_name": file_name}


async def test_an_unaddressed_photo_in_a_group_costs_nothing(telegram, vision, start_bot):
    await start_bot()
    push(telegram, GROUP, ALICE, photo=telegram.photo_sizes(make_photo()), caption="look at my cat")
    push(telegram, GROUP, BOB, text="nice cat!")
    await asyncio.sleep(1.0)

    assert vision.requests == []
    assert telegram.calls_to("getFile") == []
    assert telegram.chat_messages(GROUP["id"]) == []


async def test_a_mention_in_a_caption_asks_about_the_photo_as_a_reply(telegram, vision, start_bot):
    await start_bot()
    caption = f"{BOT_NAME} what breed is this?"
    asked = push(telegram, GROUP, ALICE, photo=telegram.photo_sizes(make_photo()), caption=caption,
                 caption_entities=mention(caption))

    messages = await answered_messages(telegram, GROUP["id"])

    assert messages[0]["reply_to_message"]["message_id"] == asked["message_id"]
    assert vision.requests[0].text_parts() == ["Alice: what breed is this?"]
    assert len(vision.requests[0].images()) == 1
    assert telegram.calls_to("sendMessageDraft") == []


async def test_mention_offsets_are_utf16(telegram, vision, start_bot):
    await start_bot()
    text = f"😀🐱 {BOT_NAME} is this cat happy?"
    push(telegram, GROUP, ALICE, text=text, entities=mention(text))

    await answered_messages(telegram, GROUP["id"])

    assert vision.requests[0].text_parts() == ["Alice: 😀🐱 is this cat happy?"]


async def test_a_mention_of_another_bot_is_not_for_us(telegram, vision, start_bot):
    await start_bot()
    text = "@other_bot what is this?"
    push(telegram, GROUP, ALICE, text=text, entities=mention(text, "@other_bot"))
    push(telegram, GROUP, ALICE, text="/ask@other_bot what is this?")
    await asyncio.sleep(1.0)

    assert vision.requests == []


async def test_a_text_mention_addresses_the_bot(telegram, vision, start_bot):
    await start_bot()
    text = "Vision, describe this"
    entities = [{"type": "text_mention", "offset": 0, "length": 6, "user": telegram.bot_user}]
    push(telegram, GROUP, ALICE, photo=telegram.photo_sizes(make_photo()), caption=text, caption_entities=entities)

    await answered_messages(telegram, GROUP["id"])

    assert vision.requests[0].text_parts() == ["Alice: , describe this"]


async def test_ask_command_and_reply_to_the_bot_continue_the_group_conversation(telegram, vision, start_bot):
    vision.enqueue(stream_reply(["A mushroom."]), stream_reply(["Not safe."]), stream_reply(["Amanita."]))
    await start_bot()
    push(telegram, GROUP, ALICE, photo=telegram.photo_sizes(make_photo()), caption="/ask what is it?")
    first = (await answered_messages(telegram, GROUP["id"]))[0]

    push(telegram, GROUP, BOB, text="is it safe?", reply_to_message=first)
    await answered_messages(telegram, GROUP["id"], count=2)
    push(telegram, GROUP, BOB, text=f"/ask{BOT_NAME} which species?")
    await answered_messages(telegram, GROUP["id"], count=3)

    follow_up, named = vision.requests[1], vision.requests[2]
    assert follow_up.text_parts() == ["Alice: what is it?", "A mushroom.", "Bob: is it safe?"]
    assert follow_up.images() == vision.requests[0].images()
    assert named.text_parts()[-1] == "Bob: which species?"


async def test_a_mention_replying_to_someone_elses_photo_asks_about_that_photo(telegram, vision, start_bot):
    await start_bot()
    red = encoded(Image.new("RGB", (1280, 960), (200, 10, 10)), "JPEG")
    photo = push(telegram, GROUP, BOB, photo=telegram.photo_sizes(red))
    await asyncio.sleep(0.3)
    text = f"{BOT_NAME} what is in Bob's picture?"
    push(telegram, GROUP, ALICE, text=text, entities=mention(text), reply_to_message=photo)

    await answered_messages(telegram, GROUP["id"])

    request = vision.requests[0]
    assert request.text_parts() == ["Alice: what is in Bob's picture?"]
    image = Image.open(io.BytesIO(request.images()[0]))
    red, green, _ = image.convert("RGB").getpixel((5, 5))
    assert red > 150 > green


async def test_forum_topics_have_their_own_conversations_and_answers_stay_in_the_topic(
        telegram, vision, start_bot):
    await start_bot()
    text = f"{BOT_NAME} hello"
    push(telegram, FORUM, ALICE, text=text, entities=mention(text), message_thread_id=7)
    await answered_messages(telegram, FORUM["id"])
    push(telegram, FORUM, ALICE, text=text, entities=mention(text), message_thread_id=9)
    messages = await answered_messages(telegram, FORUM["id"], count=2)

    assert [message.get("message_thread_id") for message in messages] == [7, 9]
    assert len(vision.requests[1].messages) == 1


async def test_group_and_private_conversations_are_separate(telegram, vision, start_bot):
    await start_bot()
    text = f"{BOT_NAME} remember the number 42"
    push(telegram, GROUP, ALICE, text=text, entities=mention(text))
    await answered_messages(telegram, GROUP["id"])
    push(telegram, private_chat(ALICE), ALICE, text="what number?")
    await answered_messages(telegram, ALICE["id"])

    assert vision.requests[1].messages == [{"role": "user", "content": "what number?"}]


async def test_an_album_of_three_photos_is_one_question_with_three_images(telegram, vision, start_bot):
    await start_bot(vision_max_images_per_request=5)
    chat = private_chat(ALICE)
    colors = [(250, 0, 0), (0, 250, 0), (0, 0, 250)]
    for index, color in enumerate(colors):
        push(telegram, chat, ALICE, photo=telegram.photo_sizes(make_photo(color=color)), media_group_id="album-1",
             caption="which one is the brightest?" if index == 1 else None)

    texts = [message["text"] for message in await answered_messages(telegram, ALICE["id"])]
    await asyncio.sleep(1.0)

    assert len(vision.requests) == 1
    assert len(vision.requests[0].images()) == 3
    assert vision.requests[0].text_parts() == ["which one is the brightest?"]
    assert final_texts(telegram, ALICE["id"]) == texts


async def test_an_album_larger_than_the_model_takes_keeps_the_first_images_and_says_so(
        telegram, vision, start_bot):
    await start_bot(vision_max_images_per_request=2, album_grid=False)
    chat = private_chat(ALICE)
    for _ in range(4):
        push(telegram, chat, ALICE, photo=telegram.photo_sizes(make_photo()), media_group_id="album-2")

    texts = final_texts(telegram, ALICE["id"]) or [m["text"] for m in await answered_messages(telegram, ALICE["id"])]

    assert len(vision.requests) == 1
    assert len(vision.requests[0].images()) == 2
    assert "first 2 of your 4 images" in texts[0]


async def test_an_album_in_a_group_counts_a_mention_on_any_item(telegram, vision, start_bot):
    await start_bot(vision_max_images_per_request=5)
    caption = f"{BOT_NAME} compare these"
    push(telegram, GROUP, ALICE, photo=telegram.photo_sizes(make_photo()), media_group_id="g-album")
    push(telegram, GROUP, ALICE, photo=telegram.photo_sizes(make_photo()), media_group_id="g-album",
         caption=caption, caption_entities=mention(caption))

    await answered_messages(telegram, GROUP["id"])

    assert len(vision.requests[0].images()) == 2
    assert vision.requests[0].text_parts() == ["Alice: compare these"]


async def test_a_big_document_with_gps_reaches_the_provider_small_and_without_exif(telegram, vision, start_bot):
    await start_bot()
    original = jpeg_with_gps(4000, 3000)
    assert b"PhoneMaker" in original
    push(telegram, private_chat(ALICE), ALICE, caption="where was this taken?",
         document=document(telegram, original, "image/jpeg", "IMG_0001.JPG"))

    await answered_messages(telegram, ALICE["id"])

    sent = vision.requests[0].images()[0]
    image = Image.open(io.BytesIO(sent))
    assert image.format == "JPEG"
    assert image.size == (1024, 768)
    assert not image.getexif()
    assert "exif" not in image.info
    assert b"PhoneMaker" not in sent
    assert b"GPS" not in sent


async def test_png_webp_gif_documents_and_static_stickers_are_images(telegram, vision, start_bot):
    await start_bot()
    picture = Image.new("RGBA", (300, 200), (255, 0, 0, 0))
    frames = [Image.new("P", (120, 80), index) for index in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    chat = private_chat(ALICE)
    push(telegram, chat, ALICE, document=document(telegram, encoded(picture, "PNG"), "image/png", "a.png"))
    push(telegram, chat, ALICE, document=document(telegram, encoded(picture, "WEBP"), "image/webp", "b.webp"))
    push(telegram, chat, ALICE, document=document(telegram, gif.getvalue(), "image/gif", "c.gif"))
    sticker_file = telegram.add_file(encoded(picture, "WEBP"))
    push(telegram, chat, ALICE, sticker={**sticker_file, "type": "regular", "width": 300, "height": 200,
                                         "is_animated": False, "is_video": False})

    await answered_messages(telegram, ALICE["id"], count=4)

    sizes = [Image.open(io.BytesIO(request.images()[-1])).size for request in vision.requests]
    assert sizes == [(300, 200), (300, 200), (120, 80), (300, 200)]
    transparent_png = Image.open(io.BytesIO(vision.requests[0].images()[-1])).convert("RGB")
    assert transparent_png.getpixel((10, 10)) == (255, 255, 255)


async def test_files_that_are_not_images_get_a_hint_in_private_and_silence_in_groups(telegram, vision, start_bot):
    await start_bot()
    pdf = document(telegram, b"%PDF-1.4 not an image", "application/pdf", "report.pdf")
    push(telegram, private_chat(ALICE), ALICE, document=pdf)
    texts = [message["text"] for message in await answered_messages(telegram, ALICE["id"])]
    caption = f"{BOT_NAME} read this"
    push(telegram, GROUP, ALICE, document=pdf, caption=caption, caption_entities=mention(caption))
    await asyncio.sleep(1.0)

    assert "I can only look at images" in texts[0]
    assert telegram.chat_messages(GROUP["id"]) == []
    assert vision.requests == []


async def test_a_file_over_20_mb_is_refused_before_downloading(telegram, vision, start_bot):
    await start_bot()
    huge = document(telegram, make_photo(), "image/jpeg", "huge.jpg", file_size=25 * 1024 * 1024)
    push(telegram, private_chat(ALICE), ALICE, document=huge)

    texts = [message["text"] for message in await answered_messages(telegram, ALICE["id"])]

    assert "too large" in texts[0] and "compressed photo" in texts[0]
    assert telegram.calls_to("getFile") == []
    assert vision.requests == []


async def test_a_corrupt_image_gets_a_friendly_message_and_no_provider_call(telegram, vision, start_bot):
    await start_bot()
    broken = make_photo()[:500] + zlib.compress(b"garbage" * 50)
    push(telegram, private_chat(ALICE), ALICE, document=document(telegram, broken, "image/jpeg", "broken.jpg"))

    texts = [message["text"] for message in await answered_messages(telegram, ALICE["id"])]

    assert "couldn't open this image" in texts[0]
    assert vision.requests == []


async def test_in_private_a_question_replying_to_an_earlier_photo_uses_that_photo(telegram, vision, start_bot):
    await start_bot()
    chat = private_chat(ALICE)
    photo = push(telegram, chat, ALICE, photo=telegram.photo_sizes(make_photo()), caption="first")
    await answered_messages(telegram, ALICE["id"])
    push(telegram, chat, ALICE, text="/reset")
    await answered_messages(telegram, ALICE["id"], count=2)
    push(telegram, chat, ALICE, text="and the colour?", reply_to_message=photo)
    await answered_messages(telegram, ALICE["id"], count=3)

    assert vision.requests[-1].text_parts() == ["and the colour?"]
    assert vision.requests[-1].images() == vision.requests[0].images()


async def test_low_detail_downloads_a_smaller_photo_size_and_sends_512_px(telegram, vision, start_bot):
    await start_bot(vision_image_detail="low")
    sizes = telegram.photo_sizes(make_photo(1280, 960))
    push(telegram, private_chat(ALICE), ALICE, photo=sizes)

    await answered_messages(telegram, ALICE["id"])

    assert telegram.calls_to("getFile")[0].params["file_id"] == sizes[2]["file_id"]
    image = Image.open(io.BytesIO(vision.requests[0].images()[0]))
    assert max(image.size) <= 512
    assert vision.requests[0].body["messages"][0]["content"][1]["image_url"]["detail"] == "low"

