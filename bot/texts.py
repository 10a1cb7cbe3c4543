"""Everything users read, in English and Simplified Chinese."""

from __future__ import annotations

from typing import Literal

Language = Literal["en", "zh"]

_TEXTS: dict[str, dict[Language, str]] = {
    "start": {
        "en": "Hi! Send me a photo and ask anything about it: what it is, what a sign says, what to watch out for.\n"
        "Follow-up questions keep the photo in mind. /reset starts over.",
        "zh": "你好！发给我一张照片，然后问任何关于它的问题：这是什么、牌子上写了什么、需要注意什么。\n"
        "后续提问会记住这张照片。/reset 可以重新开始。",
    },
    "help": {
        "en": "How to use me:\n"
        "• Send a photo, with your question as the caption (or none, for a description).\n"
        "• Ask follow-up questions as plain messages: I remember the photo.\n"
        "• /reset (or /new) forgets this conversation.\n"
        "• /model shows or changes the AI model of this chat.",
        "zh": "使用方法：\n"
        "• 发送一张照片，把问题写在说明里（不写则给出描述）。\n"
        "• 直接发消息继续提问：我会记得这张照片。\n"
        "• /reset（或 /new）清除本次对话。\n"
        "• /model 查看或更换本聊天使用的 AI 模型。",
    },
    "reset_not_allowed": {
        "en": "Only this group's admins can reset its conversation with me.",
        "zh": "只有本群管理员可以清除与我的对话。",
    },
    "stats_in_private": {
        "en": "Statistics cover every chat: ask me for /stats in a private chat.",
        "zh": "统计涉及所有聊天：请在私聊中向我发送 /stats。",
    },
    "reset_done": {
        "en": "Done, I've forgotten this conversation. Send a new photo whenever you like.",
        "zh": "好的，已清除本次对话。随时可以发新照片。",
    },
    "default_question": {
        "en": "What is in this image? Describe it briefly.",
        "zh": "这张图片里有什么？请简要描述。",
    },
    "no_context": {
        "en": "Send me a photo first, then ask about it.",
        "zh": "请先发一张照片，再针对它提问。",
    },
    "unsupported_file": {
        "en": "I can only look at images: send a photo, or an image file (JPEG, PNG, HEIC, WebP, GIF) or a static "
        "sticker, and ask about it.",
        "zh": "我只能看图片：请发送照片、图片文件（JPEG、PNG、HEIC、WebP、GIF）或静态贴纸，然后提问。",
    },
    "images_capped": {
        "en": "I looked at the first {kept} of your {total} images: this model takes at most {kept} per question.",
        "zh": "您发送了 {total} 张图片，我只看了前 {kept} 张：该模型每次提问最多接受 {kept} 张。",
    },
    "stopped": {"en": "Stopped.", "zh": "已停止。"},
    "stop_button": {"en": "⏹ Stop", "zh": "⏹ 停止"},
    "stop_not_allowed": {
        "en": "Only the person who asked can stop this answer.",
        "zh": "只有提问的人可以停止这个回答。",
    },
    "stop_unknown": {"en": "This answer is already finished.", "zh": "这个回答已经结束了。"},
    "cut_off": {
        "en": "(answer cut off)",
        "zh": "（回答被中断）",
    },
    "length_limit": {
        "en": "The answer reached its length limit. Ask me to continue.",
        "zh": "回答已达到长度上限。可以让我继续。",
    },
    "commands.start": {"en": "Start and see what I can do", "zh": "开始使用"},
    "commands.help": {"en": "How to use the bot", "zh": "使用帮助"},
    "commands.reset": {"en": "Forget this conversation", "zh": "清除当前对话"},
    "commands.new": {"en": "Start a new conversation", "zh": "开始新对话"},
    "error.auth": {
        "en": "The AI service isn't accepting this bot's key right now.{told} Please try later.",
        "zh": "AI 服务暂时不接受本机器人的密钥。{told}请稍后再试。",
    },
    "error.quota": {
        "en": "The bot's AI credit has run out.{told} Please try again later.",
        "zh": "机器人的 AI 额度已用完。{told}请稍后再试。",
    },
    "error.content_policy": {
        "en": "The AI service declined this request under its content rules. Try another photo or other words.",
        "zh": "AI 服务根据其内容规则拒绝了这个请求。请换一张图片或换个问法。",
    },
    "error.rate_limited": {
        "en": "The AI service is busy with too many requests. Please try again in a minute.",
        "zh": "AI 服务请求过多，正忙。请一分钟后再试。",
    },
    "error.context_too_long": {
        "en": "This conversation has grown too long for the AI. Send /reset and ask again.",
        "zh": "对话太长了，AI 处理不了。请发送 /reset 后重新提问。",
    },
    "error.misconfigured": {
        "en": "The bot isn't set up correctly for its AI service.{told}",
        "zh": "机器人的 AI 服务配置有误。{told}",
    },
    "error.bad_request": {
        "en": "The AI service couldn't process this request.{told} Try rephrasing it.",
        "zh": "AI 服务无法处理这个请求。{told}您也可以换个问法试试。",
    },
    "error.image_rejected": {
        "en": "The AI service couldn't read this image. Try sending it as a regular photo.",
        "zh": "AI 服务无法读取这张图片。请尝试以普通照片的方式发送。",
    },
    "error.unavailable": {
        "en": "The AI service isn't responding right now. Please try again in a few minutes.",
        "zh": "AI 服务暂时没有响应。请几分钟后再试。",
    },
    "error.stream_cut": {
        "en": "The answer was cut off by the AI service. Ask again to get the rest.",
        "zh": "回答被 AI 服务中断了。请再问一次以获得完整回答。",
    },
    "error.empty_answer": {
        "en": "The AI service returned an empty answer. Please try again or rephrase the question.",
        "zh": "AI 服务返回了空的回答。请重试或换个问法。",
    },
    "error.provider": {
        "en": "Something went wrong with the AI service. Please try again later.",
        "zh": "AI 服务出了点问题。请稍后再试。",
    },
    "error.bad_image": {
        "en": "I couldn't open this image. It may be damaged; please send it again as a photo.",
        "zh": "无法打开这张图片，可能已损坏。请以照片方式重新发送。",
    },
    "error.image_too_large": {
        "en": "This image is too large for me to download (over {max_mb} MB). Please send it as a compressed photo.",
        "zh": "这张图片太大（超过 {max_mb} MB），无法下载。请以压缩照片的方式发送。",
    },
    "error.image_download": {
        "en": "I couldn't download this image from Telegram. Please send it again.",
        "zh": "无法从 Telegram 下载这张图片。请重新发送。",
    },
    "error.interrupted": {
        "en": "I was restarted before I could answer. Please ask again.",
        "zh": "我在回答前被重启了。请再问一次。",
    },
    "error.user_rate_limited": {
        "en": "You're asking faster than this bot allows. Please wait {seconds} s and ask again.",
        "zh": "提问太频繁了。请等待 {seconds} 秒后再问。",
    },
    "error.daily_budget": {
        "en": "Today's AI allowance for this {scope} is used up. It resets at midnight UTC.",
        "zh": "今天这个{scope}的 AI 额度已用完，将在 UTC 午夜重置。",
    },
    "scope.user": {"en": "account", "zh": "用户"},
    "scope.chat": {"en": "chat", "zh": "聊天"},
    "access_denied": {
        "en": "Sorry, this bot is private. Ask its owner for access and give them your id: {user_id}.",
        "zh": "抱歉，这是一个私有机器人。请联系管理员开通，并提供您的 ID：{user_id}。",
    },
    "usage": {
        "en": "Today (UTC): you used {user_tokens} tokens{user_budget}; "
        "this chat used {chat_tokens} tokens{chat_budget}.",
        "zh": "今天（UTC）：您用了 {user_tokens} 个 token{user_budget}；"
        "本聊天用了 {chat_tokens} 个 token{chat_budget}。",
    },
    "usage_budget": {"en": " of {budget}", "zh": "（上限 {budget}）"},
    "commands.usage": {"en": "Your and this chat's usage today", "zh": "今日用量"},
    "commands.model": {"en": "Choose the AI model for this chat", "zh": "选择本聊天使用的 AI 模型"},
    "model_current": {
        "en": "Current model: {model}\nTap another to switch, or send /model NAME.",
        "zh": "当前模型：{model}\n点击其他模型即可切换，也可以发送 /model 模型名。",
    },
    "model_only_one": {
        "en": "Current model: {model}. It is the only one on offer; the bot's operator can offer more with "
        "VISION_MODELS.",
        "zh": "当前模型：{model}。目前只提供这一个模型；机器人管理员可以通过 VISION_MODELS 提供更多模型。",
    },
    "model_changed": {"en": "Done: answers here now use {model}.", "zh": "好的：这里的回答现在使用 {model}。"},
    "model_unchanged": {"en": "Answers here already use {model}.", "zh": "这里的回答已经在使用 {model}。"},
    "model_unknown": {
        "en": "I don't know the model “{name}”. Choose one of: {models}.",
        "zh": "没有名为“{name}”的模型。请从以下模型中选择：{models}。",
    },
    "model_not_allowed": {
        "en": "Sorry, only this group's admins can change the model.",
        "zh": "抱歉，只有本群管理员可以更换模型。",
    },
    "model_menu_stale": {
        "en": "This menu is out of date. Send /model again.",
        "zh": "这个菜单已过期。请重新发送 /model。",
    },
    "error.timeout": {
        "en": "The AI service didn't start answering in time. Please try again in a few minutes.",
        "zh": "AI 服务没有及时开始回答。请几分钟后再试。",
    },
    "error.needs_image_urls": {
        "en": "This AI model only takes images as web links, and this bot isn't set up for that: the operator must "
        "set PUBLIC_BASE_URL or S3.",
        "zh": "该 AI 模型只接受图片链接，而本机器人尚未配置：需要管理员设置 PUBLIC_BASE_URL 或 S3。",
    },
    "error.image_publish": {
        "en": "I couldn't hand your image over to the AI service. Please try again in a few minutes.",
        "zh": "无法把图片交给 AI 服务。请几分钟后再试。",
    },
    "still_waiting": {
        "en": "⏳ Still waiting for the AI service to start answering…",
        "zh": "⏳ 仍在等待 AI 服务开始回答……",
    },
    "owner_told": {"en": " The owner has been told.", "zh": "已通知管理员。"},
    "error.internal": {
        "en": "Sorry, something went wrong on my side. Please try again.",
        "zh": "抱歉，我这边出了点问题。请再试一次。",
    },
}

LANGUAGES: tuple[Language, ...] = ("en", "zh")


def language_of(language_code: str | None) -> Language:
    """Telegram's IETF tag (zh-hans, zh-CN, en-US, ...) to one of our languages."""
    if language_code and language_code.lower().startswith("zh"):
        return "zh"
    return "en"


def text(key: str, language: Language) -> str:
    return _TEXTS[key][language]


def error_text(kind: str, language: Language, *, operators_told: bool = False, max_image_bytes: int = 20 << 20,
               **values: object) -> str:
    """The friendly sentence for an error kind; unknown kinds fall back to the generic provider text.

    "The owner has been told" only when there is an owner to tell (ADMIN_IDS); the size limit is the configured one.
    """
    entry = _TEXTS.get(f"error.{kind}", _TEXTS["error.provider"])
    told = _TEXTS["owner_told"][language] if operators_told else ""
    return entry[language].format(told=told, max_mb=f"{max_image_bytes / (1 << 20):g}", **values)
