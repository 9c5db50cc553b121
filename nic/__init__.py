"""The SmartNIC agent, its parts, the hardware profile and packet-stream timing."""

from nicemu.errors import ProfileError
from nicemu.nic.profile import Profile, load_profile, shipped_profiles

__all__ = ["Profile", "ProfileError", "load_profile", "shipped_profiles"]
