"""enroll"""
