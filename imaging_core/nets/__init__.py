"""Networks: the residual 3D U-Net (MONAI ``UNet`` layout) and its helpers."""
from .unet3d import (UNet3D, load_monai_state_dict, monai_key_map, small_unet,
                     to_monai_state_dict, unet_from_config)

__all__ = ["UNet3D", "small_unet", "unet_from_config", "load_monai_state_dict",
           "to_monai_state_dict", "monai_key_map"]
