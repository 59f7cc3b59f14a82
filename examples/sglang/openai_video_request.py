"""Send a chat request with a video to a running SGLang server (see launch_server.sh) through the OpenAI client.

Usage: python examples/sglang/openai_video_request.py VIDEO_URL_OR_PATH [--base-url http://127.0.0.1:30000/v1]
A local file can be given as a path or ``file://`` URL (the server reads it), or any http(s) URL.
"""

import argparse

from openai import OpenAI


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("video")
    ap.add_argument("--base-url", default="http://127.0.0.1:30000/v1")
    a = ap.parse_args()
    client = OpenAI(base_url=a.base_url, api_key="EMPTY")
    resp = client.chat.completions.create(
        model="default",
        temperature=0,
        max_tokens=128,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "video_url", "video_url": {"url": a.video}},
                    {"type": "text", "text": "Describe what happens in this video."},
                ],
            }
        ],
    )
    print(resp.choices[0].message.content)
    # usage.prompt_tokens counts the video tokens; long ones are the requests mmi runs sparse
    print(resp.usage)


if __name__ == "__main__":
    main()
