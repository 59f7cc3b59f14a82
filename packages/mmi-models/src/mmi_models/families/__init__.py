"""The built-in family adapters; importing this package registers them (see `mmi_models.adapter.get_adapter`)."""

from mmi_models.families.llava_onevision import LlavaOnevisionAdapter, LlavaVideoRemoteAdapter
from mmi_models.families.longvila import LongVILAAdapter
from mmi_models.families.qwen_vl import Qwen3VLAdapter, QwenVLAdapter
from mmi_models.families.videochat_flash import VideoChatFlashAdapter

__all__ = [
    "LlavaOnevisionAdapter",
    "LlavaVideoRemoteAdapter",
    "LongVILAAdapter",
    "Qwen3VLAdapter",
    "QwenVLAdapter",
    "VideoChatFlashAdapter",
]
