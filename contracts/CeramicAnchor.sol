// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.28;

/// @title CeramicAnchor
/// @notice The anchor contract of this service. Its external interface matches the deployed
///         `CeramicAnchorServiceV2` (CIP-110) at 0x231055A0852D67C7107Ad0d0DFeab60278fE6AdC:
///         an allow-listed service (or the owner) calls `anchorDagCbor(root)`, which only emits
///         `DidAnchor(service, root)`. Nodes validate anchors from the transaction input alone.
/// @dev Storage layout (kept deliberately flat, because local tests install the runtime code
///      with `anvil_setCode`, where no constructor runs, and then set the owner directly):
///        slot 0: `_owner`   (address, right-aligned in the 32-byte word)
///        slot 1: `_allowed` (mapping(address => bool); the flag of `a` lives at
///                keccak256(abi.encode(a, uint256(1))))
contract CeramicAnchor {
    /// @dev Slot 0. May call the admin functions, and may anchor itself.
    address private _owner;

    /// @dev Slot 1. Services allowed to anchor.
    mapping(address => bool) private _allowed;

    /// @notice Emitted for every anchor. topic0 =
    ///         0x37f9254ff1973d24d609016d6bb0aef8e6de91808811a546fad8eaa0e481d9d9
    event DidAnchor(address indexed _service, bytes32 _root);

    /// @notice Emitted when the owner adds a service to the allowlist.
    event DidAddCas(address indexed _service);

    /// @notice Emitted when a service is removed from the allowlist.
    event DidRemoveCas(address indexed _service);

    /// @notice Emitted when ownership changes (also at construction).
    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);

    /// @dev The deployer becomes the owner.
    constructor() {
        _setOwner(msg.sender);
    }

    modifier onlyOwner() {
        require(msg.sender == _owner, "Ownable: caller is not the owner");
        _;
    }

    /// @notice The current owner.
    function owner() external view returns (address) {
        return _owner;
    }

    /// @notice Hands ownership to `newOwner` (not the zero address). Owner only.
    function transferOwnership(address newOwner) external onlyOwner {
        require(newOwner != address(0), "Ownable: new owner is the zero address");
        _setOwner(newOwner);
    }

    /// @notice Allows `_service` to anchor. Owner only.
    function addCas(address _service) external onlyOwner {
        _allowed[_service] = true;
        emit DidAddCas(_service);
    }

    /// @notice Removes `_service` from the allowlist. The owner or the service itself.
    function removeCas(address _service) external {
        require(msg.sender == _owner || msg.sender == _service, "Allow List: caller may not remove this service");
        _allowed[_service] = false;
        emit DidRemoveCas(_service);
    }

    /// @notice Whether `_service` is on the allowlist (the owner may anchor regardless).
    function isServiceAllowed(address _service) external view returns (bool) {
        return _allowed[_service];
    }

    /// @notice Records the sha256 digest of a dag-cbor Merkle root. Allow-listed services
    ///         and the owner only. The allowlist is read first, so the common case costs a
    ///         single cold SLOAD.
    function anchorDagCbor(bytes32 _root) external {
        require(_allowed[msg.sender] || msg.sender == _owner, "Allow List: caller is not allowed");
        emit DidAnchor(msg.sender, _root);
    }

    function _setOwner(address newOwner) private {
        address previous = _owner;
        _owner = newOwner;
        emit OwnershipTransferred(previous, newOwner);
    }
}
