"""gallery/search"""
